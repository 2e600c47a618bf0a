"""The penalty on the IRM's output (``--penalty l1|l2``)."""

from __future__ import annotations

from torch import Tensor


def output_penalty(delta: Tensor, attention_mask: Tensor, kind: str) -> Tensor:
    """Mean |x| (l1) or x^2 (l2) over every element of the IRM output at real tokens, so
    its weight does not depend on batch size, length or the number of layers."""
    mask = attention_mask.to(delta.dtype)[..., None, None]
    values = delta.abs() if kind == "l1" else delta.square()
    return (values * mask).sum() / (mask.sum() * delta.shape[-2] * delta.shape[-1]).clamp_min(1)
