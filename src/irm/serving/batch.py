"""The running rows of the engine and their shared KV cache, left-padded to one length.

Rows join (:func:`merge`: both caches left-padded to the longer one and stacked) and leave
(:func:`select`, which also cuts the columns only padding still used). The attention mask
hides the padding and each row's position ids count its real tokens only, so a row computes
what it would alone, up to the rounding of a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from irm.serving.jobs import Job


@dataclass
class Batch:
    """The running rows: their jobs, the shared cache, the attention mask over it, the
    token each row feeds next and that token's position."""

    jobs: list[Job]
    cache: DynamicCache
    mask: Tensor
    next_ids: Tensor
    positions: Tensor


def _pad_left(tensor: Tensor, width: int, dim: int) -> Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _kv(cache: DynamicCache) -> list[tuple[DynamicLayer, Tensor, Tensor]]:
    """Each layer of the cache with its keys and values (all plain :class:`DynamicLayer`s,
    as :meth:`Engine._check_cache` made sure)."""
    found = []
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys is not None and layer.values is not None
        found.append((layer, layer.keys, layer.values))
    return found


def merge(a: Batch, b: Batch) -> Batch:
    """One batch of ``a``'s rows then ``b``'s, left-padded to a common cache length."""
    width = max(a.mask.shape[1], b.mask.shape[1])
    for (layer, ka, va), (_, kb, vb) in zip(_kv(a.cache), _kv(b.cache)):
        layer.keys = torch.cat([_pad_left(ka, width, -2), _pad_left(kb, width, -2)])
        layer.values = torch.cat([_pad_left(va, width, -2), _pad_left(vb, width, -2)])
    mask = torch.cat([_pad_left(a.mask, width, 1), _pad_left(b.mask, width, 1)])
    return Batch(a.jobs + b.jobs, a.cache, mask, torch.cat([a.next_ids, b.next_ids]), torch.cat([a.positions, b.positions]))


def select(batch: Batch, keep: list[int]) -> Batch:
    """The ``keep`` rows, with the cache columns that only padding still used cut off."""
    index = torch.tensor(keep, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    start = int((mask.sum(0) == 0).int().cumprod(0).sum())
    for layer, keys, values in _kv(batch.cache):
        layer.keys = keys.index_select(0, index)[..., start:, :]
        layer.values = values.index_select(0, index)[..., start:, :]
    return Batch([batch.jobs[i] for i in keep], batch.cache, mask[:, start:], batch.next_ids[index], batch.positions[index])
