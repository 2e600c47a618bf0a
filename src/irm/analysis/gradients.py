"""The host's loss gradient at each injection point: what an IRM is pushed towards before it
has learned anything.

A zero :class:`~irm.core.steering.SteeringVector` attached at the IRM's layers adds nothing, but
its gradient is the training loss's gradient with respect to the hidden state at each
injection point, summed over all positions: an ``(H, L)`` map with the layout of an IRM
output. Where its columns (layers) point the same way, an IRM trained on that loss gets the
same push in those layers, since the residual stream carries each layer's addition to all
later ones; ``irm analyze --gradients`` compares the map with what the IRM actually learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from irm.analysis.statistics import index_profile, striation, top_k
from irm.core.attach import attach
from irm.core.steering import SteeringVector, steering_config
from irm.data.rows import Row, collate, tokenize_rows
from irm.hosts.loading import Host


@dataclass
class ResidualGradients:
    gradients: np.ndarray
    """``(H, L)``: d(summed target-token loss)/d(hidden state at each injection point), summed over all positions."""
    layers: list[int]
    tokens: int

    def layer_cosines(self) -> np.ndarray:
        """``(L, L)`` cosine similarity of the per-layer gradient vectors."""
        g = self.gradients / np.maximum(np.linalg.norm(self.gradients, axis=0, keepdims=True), 1e-30)
        return g.T @ g

    def summary(self, k: int = 10) -> dict[str, Any]:
        cos = self.layer_cosines()
        n = cos.shape[0]
        off = cos[~np.eye(n, dtype=bool)] if n > 1 else np.array([1.0])
        adjacent = np.diag(cos, 1) if n > 1 else np.array([1.0])
        top = top_k(index_profile(np.abs(self.gradients).T), k)
        return {
            "layers": self.layers,
            "tokens": self.tokens,
            "mean_cosine_between_layers": float(off.mean()),
            "mean_cosine_adjacent_layers": float(adjacent.mean()),
            "cosine_first_last": float(cos[0, -1]),
            "striation": striation(np.abs(self.gradients).T).score,
            "top_indices": top.indices,
            "top_shares": top.shares,
        }


def residual_gradients(
    host: Host,
    rows: Sequence[Row],
    layers: Sequence[int],
    *,
    site: str = "resid_mid",
    max_length: int = 128,
    batch_size: int = 8,
    loss_on: str = "answer",
) -> ResidualGradients:
    """Sum over ``rows`` (formatted as in training) of the loss gradient at ``site`` of ``layers``."""
    from irm.training.loss import target_loss

    probe = SteeringVector(steering_config(host, list(layers), site))
    probe.vectors.requires_grad_(True)
    tokenizer = host.require_tokenizer()
    examples, _ = tokenize_rows(list(rows), tokenizer, max_length=max_length, loss_on=loss_on)
    device = next(host.model.parameters()).device
    probe.to(device)
    tokens = 0
    with attach(host, probe):
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            nll, count = target_loss(host.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            nll.backward()
            tokens += int(count)
    grads = probe.vectors.grad if probe.vectors.grad is not None else torch.zeros_like(probe.vectors)
    return ResidualGradients(grads.detach().float().cpu().numpy(), list(layers), tokens)
