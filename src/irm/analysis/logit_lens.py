"""Logit lens of an IRM's output: which tokens its vectors write towards through the
host's final norm and LM head.

Direction lens
    A vector ``v`` added to the residual stream moves the logits, directly (not through
    later layers), by about ``W_U norm(v)``: the LM head applied to ``v`` through the final
    norm, less what the norm gives for a zero vector (a LayerNorm's bias). The tokens with
    the largest entries are the ones ``v`` promotes, the smallest the ones it suppresses.
    It is applied to each injected layer's mean output (over a recording's tokens) and to
    each top index ``i``, as ``sign * e_i`` where ``sign`` is the sign of the IRM's mean
    output at ``i`` (the LM head's column ``i`` through the final norm).
Direct effect
    The host's next-token logits at the end of each prompt with the IRM injecting only its
    last ``k`` layers, against all of them (both minus the bare host's, centred over the
    vocabulary): the share of the full change that the last ``k`` layers reproduce
    (projection ``<d_k, d_all> / |d_all|^2``) and the cosine between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from irm.core.attach import attach
from irm.core.network import IRM
from irm.hosts.generation import encode_prompts
from irm.hosts.interventions import final_norm, lm_head
from irm.hosts.loading import Host


@torch.no_grad()
def direction_logits(host: Host, vectors: Tensor) -> Tensor:
    """``(n, vocab)``: the LM head applied to each of ``vectors`` ``(n, hidden)`` through
    the final norm (minus the norm of a zero vector; without the head's bias)."""
    head = lm_head(host.model)
    norm = final_norm(host.model)
    v = vectors.to(device=host.device, dtype=head.weight.dtype)[None]
    if norm is not None:
        v = norm(v) - norm(torch.zeros_like(v[:, :1]))
    logits: Tensor = v[0] @ head.weight.T
    return logits.float()


def _tokens(host: Host, row: Tensor, k: int, largest: bool) -> list[dict[str, Any]]:
    values, ids = torch.topk(row, min(k, row.numel()), largest=largest)
    tok = host.require_tokenizer()
    return [{"token": tok.decode([int(i)]), "id": int(i), "logit": round(float(v), 4)} for v, i in zip(values, ids)]


def lens_table(host: Host, vectors: Tensor, labels: Sequence[Any], k: int = 10) -> list[dict[str, Any]]:
    """For each vector: its label and the ``k`` tokens it promotes and suppresses most."""
    logits = direction_logits(host, vectors)
    return [
        {"label": label, "promoted": _tokens(host, row, k, True), "suppressed": _tokens(host, row, k, False)}
        for label, row in zip(labels, logits)
    ]


def layer_mean_lens(host: Host, outputs: np.ndarray, layers: Sequence[int], k: int = 10) -> list[dict[str, Any]]:
    """The lens of each injected layer's mean output over the tokens of ``outputs``
    ``(tokens, layers, hidden)`` (host basis)."""
    means = torch.from_numpy(np.asarray(outputs, dtype=np.float64).mean(axis=0)).float()
    return [{"layer": layer, **row} for layer, row in zip(layers, lens_table(host, means, layers, k))]


def index_lens(host: Host, outputs: np.ndarray, indices: Sequence[int], k: int = 10) -> list[dict[str, Any]]:
    """The lens of each hidden index ``i`` as ``sign * e_i``, ``sign`` that of the mean
    output at ``i`` over all tokens and layers."""
    means = np.asarray(outputs, dtype=np.float64).mean(axis=(0, 1))
    signs = [1.0 if means[i] >= 0 else -1.0 for i in indices]
    eye = torch.zeros(len(indices), host.hidden_size)
    for row, (i, s) in enumerate(zip(indices, signs)):
        eye[row, i] = s
    table = lens_table(host, eye, indices, k)
    return [{"index": int(i), "sign": int(s), **row} for i, s, row in zip(indices, signs, table)]


def _last_logits(host: Host, irm: IRM | None, enc: Any, layers: Sequence[int] | None) -> Tensor:
    if irm is None:
        logits = host.model(**enc).logits[:, -1].float()
    else:
        with attach(host, irm, layers=layers):
            logits = host.model(**enc).logits[:, -1].float()
    return logits - logits.mean(dim=-1, keepdim=True)


def default_depths(num_injected: int) -> list[int]:
    """1, 2, 4, 8 ... up to all the injected layers."""
    depths, k = [], 1
    while k < num_injected:
        depths.append(k)
        k *= 2
    return [*depths, num_injected]


@torch.no_grad()
def direct_effect(
    host: Host, irm: IRM, prompts: Sequence[str], depths: Sequence[int] | None = None, *, k: int = 10, chat: bool = True
) -> dict[str, Any]:
    """The logit change at the end of each prompt from injecting only the last ``k`` of the
    IRM's layers, against injecting all of them."""
    enc = encode_prompts(host, list(prompts), chat=chat)
    injected = list(irm.config.layers)
    bare = _last_logits(host, None, enc, None)
    full = _last_logits(host, irm, enc, injected) - bare
    rows = []
    for depth in depths or default_depths(len(injected)):
        part = _last_logits(host, irm, enc, injected[-depth:]) - bare
        share = float((part * full).sum() / (full * full).sum().clamp_min(1e-30))
        cosine = float(torch.nn.functional.cosine_similarity(part, full, dim=-1).mean())
        rows.append(
            {
                "last_k": depth,
                "first_layer": injected[-depth],
                "share_of_full_change": share,
                "mean_cosine_with_full": cosine,
                "norm_ratio": float(part.norm(dim=-1).mean() / full.norm(dim=-1).mean().clamp_min(1e-30)),
                "promoted": _tokens(host, part.mean(0), k, True),
            }
        )
    return {"prompts": len(prompts), "position": "last prompt token", "full_promoted": _tokens(host, full.mean(0), k, True), "depths": rows}
