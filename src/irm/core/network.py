"""The Injectable Realignment Model: a feed-forward network from one hidden state to
one additive vector per injected layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from irm.core.config import CONFIG_NAME, IRMConfig, IRMSpec, spec_fields
from irm.core.io import atomic_write_all, safetensors_os_errors
from irm.core.layers import parse_layers
from irm.core.rotation import input_rotation, output_rotations, rotation_digest
from irm.errors import IRMError, IRMMismatchError, writing

if TYPE_CHECKING:
    from irm.hosts.loading import Host

WEIGHTS_NAME = "model.safetensors"


class IRM(nn.Module):
    """Paper default: ``Linear(H,3H) ReLU [Linear(3H,3H) ReLU]x3 Linear(3H, H*L)``.

    ``forward`` maps ``(..., H)`` to ``(..., H, L)``: the last linear's output is viewed
    with the *layer* index fastest, as in the published implementation, and
    ``out[..., k]`` is the vector for ``config.layers[k]``.

    With ``config.output_rotation`` (or ``input_rotation``) set, fixed orthogonal matrices
    (:mod:`irm.core.rotation`, buffers that are neither trained nor saved) turn the network's
    output ``own`` into ``R_k @ own[..., k]`` (and its input ``h`` into ``Q @ h``):
    ``forward`` returns what the host receives, :meth:`own_basis` maps it back.
    """

    output_rotation: Tensor | None
    input_rotation: Tensor | None

    def __init__(self, config: IRMConfig, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        h, w, out = config.hidden_size, config.width, config.hidden_size * config.num_injected
        modules: list[nn.Module] = []
        last = h
        for _ in range(config.depth):
            modules += [nn.Linear(last, w, dtype=dtype, device=device), nn.ReLU()]
            last = w
        if config.rank is None:
            modules.append(nn.Linear(last, out, dtype=dtype, device=device))
        else:
            modules.append(nn.Linear(last, config.rank, bias=False, dtype=dtype, device=device))
            modules.append(nn.Linear(config.rank, out, dtype=dtype, device=device))
        self.net = nn.Sequential(*modules)
        self._build_rotations(dtype, device)
        self.reset_parameters()

    def _build_rotations(self, dtype: torch.dtype, device: torch.device | str | None) -> None:
        """Regenerate the rotation matrices from their seeds and check them against the
        checksum in the config (set it, for a new IRM). On the meta device they are built
        on the CPU (they are not weights that a load would fill in)."""
        config = self.config
        out = output_rotations(config.output_rotation, config.layers, config.hidden_size) if config.output_rotation is not None else None
        inp = input_rotation(config.input_rotation, config.hidden_size) if config.input_rotation is not None else None
        if out is not None or inp is not None:
            digest = rotation_digest(out, inp)
            if config.rotation_sha256 and config.rotation_sha256 != digest:
                raise IRMMismatchError(
                    f"the rotation matrices regenerated from seeds output={config.output_rotation}, input={config.input_rotation} "
                    f"have checksum {digest}, the IRM was trained with {config.rotation_sha256}",
                    hint="this irm (or numpy) draws other matrices from the same seed than the one that trained the IRM; "
                    "load it with the numpy version it was made with",
                )
            config.rotation_sha256 = digest
        place = None if device is None or torch.device(device).type == "meta" else device
        for name, matrix in (("output_rotation", out), ("input_rotation", inp)):
            self.register_buffer(name, None if matrix is None else matrix.to(device=place, dtype=dtype), persistent=False)

    def reset_parameters(self) -> None:
        """PyTorch's default init for every linear; the output layer zeroed if
        ``config.output_init == "zeros"`` so that a fresh IRM leaves the host unchanged."""
        for module in self.net:
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        if self.config.output_init == "zeros":
            last = self.net[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @classmethod
    def for_host(
        cls,
        host: Host,
        layers: str | list[int] = "all",
        spec: IRMSpec | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        **shape: Any,
    ) -> IRM:
        """A fresh IRM for an :class:`irm.Host`: the paper's IRM, or the shape given as a
        ``spec`` or as :class:`IRMSpec` field keywords (``depth=2, rank=8`` ...)."""
        if spec is not None and shape:
            raise TypeError("pass either spec or shape keywords, not both")
        spec = spec if spec is not None else IRMSpec(**shape)
        identity = host.identity()
        config = IRMConfig(host=identity, layers=parse_layers(layers, identity.num_layers), **spec_fields(spec))
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return cls(config, dtype=dtype, device=host.device)

    @property
    def output_layer(self) -> nn.Linear:
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        return last

    def forward(self, hidden: Tensor) -> Tensor:
        """The vectors the host receives, ``(..., hidden, layers)``."""
        out = self.own_output(hidden)
        if self.output_rotation is None:
            return out
        return torch.einsum("...hk,kgh->...gk", out, self.output_rotation)

    def own_output(self, hidden: Tensor) -> Tensor:
        """The network's output in its own basis (before ``R``), ``(..., hidden, layers)``."""
        if self.input_rotation is not None:
            hidden = hidden @ self.input_rotation.T
        out: Tensor = self.net(hidden)
        return out.view(*hidden.shape[:-1], self.config.hidden_size, self.config.num_injected)

    def own_basis(self, delta: Tensor) -> Tensor:
        """Map ``(..., hidden, layers)`` vectors in the host's basis to the IRM's own
        (``R_k^T`` per layer); the identity without an output rotation."""
        if self.output_rotation is None:
            return delta
        return torch.einsum("...gk,kgh->...hk", delta, self.output_rotation.to(delta.dtype))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``irm_config.json`` and ``model.safetensors`` (the IRM alone).

        Files are written to temporary names and renamed into place, so an interrupted
        save never leaves a half-written file under the final name."""
        directory = Path(directory)
        with writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config_bytes = (json.dumps(self.config.to_dict(), indent=2) + "\n").encode("utf-8")
        # both files are complete on disk before either replaces an older one
        atomic_write_all([(directory / WEIGHTS_NAME, lambda p: _save_safetensors(state, p)), (directory / CONFIG_NAME, config_bytes)])
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        host: Host | None = None,
        *,
        check_host: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> IRM:
        """Load an IRM directory. With ``host`` (an :class:`irm.Host`), refuse an IRM made
        for another host unless ``check_host=False``."""
        directory = Path(directory)
        if not directory.is_dir():
            raise IRMError(f"IRM directory {directory} not found", hint="pass a directory written by `irm train` or save_pretrained")
        config = IRMConfig.load(directory)
        kind = config.extra.get("kind", "irm")
        if kind != "irm":
            raise IRMError(f"{directory} holds a {kind}, not an IRM", hint="load it with irm.core.adapters.load_adapter")
        if host is not None and check_host:
            from irm.hosts.loading import check_host_matches

            check_host_matches(config, host)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise IRMError(f"{weights} not found", hint="the IRM directory is incomplete; re-save or re-train it")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise IRMError(f"{weights} is corrupted or not a safetensors file ({exc})", hint="re-save or re-train this IRM") from None
        check_weights(state, weights, hint="re-save or re-train this IRM")
        first = next(iter(state.values()), None)
        irm = cls(config, dtype=dtype or (first.dtype if first is not None else torch.float32), device="meta")
        expected = set(irm.state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise IRMMismatchError(
                f"{weights} does not match its config: missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}",
                hint="the weights and irm_config.json come from different IRMs",
            )
        for key, tensor in state.items():
            want = irm.state_dict()[key].shape
            if tensor.shape != want:
                raise IRMMismatchError(f"{weights}: {key} has shape {tuple(tensor.shape)}, config says {tuple(want)}")
        irm.load_state_dict(state, strict=True, assign=True)
        if dtype is not None:
            irm.to(dtype)
        if device is not None:
            irm.to(device)
        return irm


def check_weights(state: dict[str, Tensor], path: Path, *, hint: str) -> None:
    """Refuse weights that no IRM writes: not floating point, of mixed dtypes, or holding
    NaN or inf (they would make the host generate nothing)."""
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            raise IRMError(f"{path}: {key} holds {str(tensor.dtype).removeprefix('torch.')} values, not floating point weights", hint=hint)
    if len(dtypes) > 1:
        raise IRMError(f"{path}: the weights mix dtypes ({', '.join(dtypes)})", hint=hint)
    for key, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise IRMError(f"{path}: {key} holds NaN or inf values", hint=hint)


def _save_safetensors(state: dict[str, Tensor], path: Path) -> None:
    with safetensors_os_errors():
        save_file(state, str(path), metadata={"format": "pt"})
