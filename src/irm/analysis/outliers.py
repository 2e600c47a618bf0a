"""The host's own outlier dimensions, to compare with the IRM's dominant indices.

Three signals per hidden index:

``residual_max_abs``
    the largest ``|activation|`` of the residual stream (every decoder layer's output) over
    all tokens of some neutral texts: "massive activations" (Sun et al., 2024) show up as a
    few indices hundreds of times larger than the median;
``final_norm_gain``
    ``|gain|`` of the final norm before the LM head (Gemma-style norms scale by
    ``1 + weight``);
``lm_head_column_norm``
    the L2 norm over the vocabulary of each hidden index's column of the LM head
    (``weight`` is ``(vocab, hidden)``): how much that index can move the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from irm.analysis.statistics import top_k
from irm.core.sites import reading_sites
from irm.hosts.interventions import final_norm, gain_offset
from irm.hosts.loading import Host


@dataclass
class HostOutliers:
    host: str
    residual_by_layer: np.ndarray
    """``(num_layers, hidden)``: max ``|activation|`` at each layer's output."""
    final_norm_gain: np.ndarray | None
    lm_head_column_norm: np.ndarray | None

    def signals(self) -> dict[str, np.ndarray]:
        found = {
            "residual_max_abs": self.residual_by_layer.max(axis=0),
            "final_norm_gain": self.final_norm_gain,
            "lm_head_column_norm": self.lm_head_column_norm,
        }
        return {k: v for k, v in found.items() if v is not None}

    def to_dict(self, k: int) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "hidden_size": int(self.residual_by_layer.shape[1]), "k": k}
        for name, signal in self.signals().items():
            top = top_k(signal, k).indices
            median = float(np.median(signal))
            out[name] = {
                "top_k": top,
                "values": [float(signal[i]) for i in top],
                "median": median,
                "ratio_to_median": [float(signal[i] / median) if median else None for i in top],
            }
        layer_top = self.residual_by_layer.argmax(axis=1)
        out["residual_top_index_per_layer"] = [int(i) for i in layer_top]
        return out


def norm_gain(module: nn.Module | None) -> np.ndarray | None:
    weight = getattr(module, "weight", None)
    if module is None or weight is None:
        return None
    gain = weight.detach().float().cpu().numpy() + gain_offset(module)
    return np.abs(gain)


@torch.no_grad()
def host_outlier_dims(host: Host, texts: Sequence[str], *, max_length: int = 128) -> HostOutliers:
    """Measure the three signals on ``texts`` (one text per forward pass: no padding)."""
    layers = host.spec.layers(host.model)
    peak = torch.zeros(len(layers), host.hidden_size)

    def update(layer: int, site: str, hidden: Tensor) -> None:
        peak[layer] = torch.maximum(peak[layer], hidden.detach().abs().float().amax(dim=(0, 1)).cpu())

    tokenizer = host.require_tokenizer()
    with reading_sites(host.spec, host.model, [(i, "resid_post") for i in range(len(layers))], update):
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).to(host.device)
            host.model(**enc)
    head = host.model.get_output_embeddings()
    columns = head.weight.detach().float().norm(dim=0).cpu().numpy() if head is not None else None
    return HostOutliers(host.name, peak.numpy(), norm_gain(final_norm(host.model)), columns)
