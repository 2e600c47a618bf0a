"""Mean-difference steering vectors (ActAdd / CAA style), the baseline for the IRM.

For each injected layer the vector is the mean hidden state, at the injection site, over
the answer tokens of target-emotion rows minus the same mean over neutral rows. A
:class:`SteeringVector` has the same :class:`IRMConfig` as an IRM (with
``extra["kind"] == "steering"``) and the same output shape, so :func:`irm.attach`
adds it, scaled by ``strength``, exactly where an IRM would add its output. It is saved
in the IRM directory format: ``irm_config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from irm.core.config import CONFIG_NAME, IRMConfig
from irm.core.io import atomic_write_all
from irm.core.layers import parse_layers
from irm.core.network import WEIGHTS_NAME, check_weights
from irm.core.sites import reading_sites
from irm.data.rows import IGNORE_INDEX, Row, collate, tokenize_rows
from irm.errors import IRMError, IRMMismatchError, writing

if TYPE_CHECKING:
    from irm.hosts.loading import Host

KIND = "steering"


class SteeringVector(nn.Module):
    """Constant vectors ``(H, L)``; ``forward`` broadcasts them to ``(..., H, L)`` whatever
    the hidden state, so the addition does not depend on the input."""

    def __init__(self, config: IRMConfig, vectors: Tensor | None = None, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        if config.extra.get("kind") != KIND:
            raise IRMError("a SteeringVector needs a config with extra['kind'] == 'steering'")
        self.config = config
        shape = (config.hidden_size, config.num_injected)
        if vectors is None:
            vectors = torch.zeros(shape, device=device)
        if tuple(vectors.shape) != shape:
            raise IRMMismatchError(f"steering vectors have shape {tuple(vectors.shape)}, config says {shape}")
        self.vectors = nn.Parameter(vectors.detach().clone().to(device), requires_grad=False)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.vectors.expand(*hidden.shape[:-1], *self.vectors.shape)

    def num_parameters(self) -> int:
        return self.vectors.numel()

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        with writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
        state = {"vectors": self.vectors.detach().contiguous().cpu()}
        # both files are complete on disk before either replaces an older one
        atomic_write_all(
            [
                (directory / WEIGHTS_NAME, save_safetensors(state, metadata={"format": "pt"})),
                (directory / CONFIG_NAME, (json.dumps(self.config.to_dict(), indent=2) + "\n").encode("utf-8")),
            ]
        )
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, host: Host | None = None, *, check_host: bool = True, device: torch.device | str | None = None
    ) -> SteeringVector:
        directory = Path(directory)
        config = IRMConfig.load(directory)
        if host is not None and check_host:
            from irm.hosts.loading import check_host_matches

            check_host_matches(config, host)
        weights = directory / WEIGHTS_NAME
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise IRMError(f"{weights} is missing, corrupted or not a safetensors file ({exc})", hint="re-run `irm steer fit`") from None
        if set(state) != {"vectors"}:
            raise IRMMismatchError(f"{weights} holds {sorted(state)[:4]}, not a steering vector")
        check_weights(state, weights, hint="re-run `irm steer fit`")
        return cls(config, state["vectors"], device=device)


def steering_config(host: Host, layers: Sequence[int], site: str, extra: dict[str, Any] | None = None) -> IRMConfig:
    """An IRM config whose input point is the first injection point (the vector ignores it)."""
    first = min(layers)
    return IRMConfig(
        host=host.identity(),
        layers=list(layers),
        site=site,
        input_layer=first,
        input_site=site,
        depth=0,
        width_multiplier=1.0,
        extra={**(extra or {}), "kind": KIND},
    )


@contextmanager
def recording(host: Host, layers: Sequence[int], site: str) -> Iterator[dict[int, Tensor]]:
    """Record the hidden state at ``site`` of each of ``layers`` during forward passes
    (the last pass wins), at the same points where :func:`irm.attach` injects."""
    seen: dict[int, Tensor] = {}

    def keep(layer: int, site: str, resid: Tensor) -> None:
        seen[layer] = resid

    with reading_sites(host.spec, host.model, [(i, site) for i in layers], keep):
        yield seen


@torch.no_grad()
def mean_answer_states(
    host: Host, rows: Sequence[Row], layers: Sequence[int], site: str, *, max_length: int = 128, batch_size: int = 8
) -> Tensor:
    """Mean hidden state ``(H, L)`` at ``site`` of ``layers`` over all answer tokens of
    ``rows`` (every token of a text-only row), formatted as in training."""
    tokenizer = host.require_tokenizer()
    examples, _ = tokenize_rows(rows, tokenizer, max_length=max_length, loss_on="answer")
    if not examples:
        raise IRMError("no row has an answer token to average over", hint="check the data, or raise --max-length")
    sums = torch.zeros(host.hidden_size, len(layers), dtype=torch.float64)
    count = 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
        with recording(host, layers, site) as seen:
            host.model(input_ids=batch["input_ids"].to(host.device), attention_mask=batch["attention_mask"].to(host.device))
        keep = (batch["labels"] != IGNORE_INDEX).to(host.device)
        for k, layer in enumerate(layers):
            sums[:, k] += seen[layer][keep].double().sum(0).cpu()
        count += int(keep.sum())
    return (sums / count).float()


def fit_steering_vector(
    host: Host,
    target_rows: Sequence[Row],
    neutral_rows: Sequence[Row],
    layers: str | Sequence[int],
    *,
    site: str = "resid_mid",
    max_length: int = 128,
    extra: dict[str, Any] | None = None,
) -> SteeringVector:
    """Per injected layer: mean answer-token state of ``target_rows`` minus that of
    ``neutral_rows``, at ``site``."""
    chosen = parse_layers(layers if isinstance(layers, str) else list(layers), host.num_layers)
    config = steering_config(host, chosen, site, {**(extra or {}), "target_rows": len(target_rows), "neutral_rows": len(neutral_rows)})
    diff = mean_answer_states(host, target_rows, chosen, site, max_length=max_length) - mean_answer_states(
        host, neutral_rows, chosen, site, max_length=max_length
    )
    return SteeringVector(config, diff.to(host.dtype), device=host.device)
