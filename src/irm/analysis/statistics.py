"""Numbers about IRM outputs, on plain numpy arrays.

Maps are ``(layer, hidden)``; stacks of maps are ``(..., layer, hidden)``.

Striation score
    A two-way decomposition (no interaction term) of a map ``A`` of ``|output|`` with
    ``L`` layers and ``H`` hidden indices, grand mean ``m``, layer means ``r_l`` and index
    means ``c_h``::

        SS_hidden = L * sum_h (c_h - m)^2        SS_layer = H * sum_l (r_l - m)^2
        SS_resid  = sum_lh (A_lh - r_l - c_h + m)^2
        SS_total  = sum_lh (A_lh - m)^2 = SS_hidden + SS_layer + SS_resid

    ``striation = SS_hidden / SS_total``: the share of the variance explained by the hidden
    index alone. 1 when ``A`` depends only on the index (vertical stripes, identical in
    every layer), 0 when it depends only on the layer; i.i.d. noise scores about
    ``(H - 1) / (L * H - 1)`` (reported as ``noise_level``). The residual share is kept in
    the denominator on purpose: without it, noise would score ``H / (H + L)``, near 1.
Sparsity (per token, over all ``L * H`` values of ``|output|``)
    Hoyer's measure ``(sqrt(n) - |x|_1 / |x|_2) / (sqrt(n) - 1)``: 0 when every value is
    equal, 1 when one value holds everything; and the share of the total ``|output|`` held
    by the largest 1% of values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def mean_abs_map(outputs: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Mean ``|output|`` over tokens of a ``(tokens, layer, hidden)`` array (chunked, float64)."""
    total = np.zeros(outputs.shape[1:], dtype=np.float64)
    for start in range(0, outputs.shape[0], chunk):
        total += np.abs(np.asarray(outputs[start : start + chunk], dtype=np.float64)).sum(0)
    return total / max(outputs.shape[0], 1)


@dataclass
class Striation:
    score: float
    layer_share: float
    residual_share: float
    noise_level: float


def _sums_of_squares(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(maps, dtype=np.float64)
    n_layers, n_hidden = a.shape[-2:]
    grand = a.mean(axis=(-2, -1), keepdims=True)
    by_layer = a.mean(axis=-1, keepdims=True)
    by_index = a.mean(axis=-2, keepdims=True)
    ss_hidden = n_layers * ((by_index - grand) ** 2).sum(axis=(-2, -1))
    ss_layer = n_hidden * ((by_layer - grand) ** 2).sum(axis=(-2, -1))
    ss_total = ((a - grand) ** 2).sum(axis=(-2, -1))
    return ss_hidden, ss_layer, ss_total


def striation_scores(maps: np.ndarray) -> np.ndarray:
    """The striation score of each ``(layer, hidden)`` map of a stack; 0 for a constant map."""
    ss_hidden, _, ss_total = _sums_of_squares(maps)
    return np.divide(ss_hidden, ss_total, out=np.zeros_like(ss_total), where=ss_total > 0)


def striation(a: np.ndarray) -> Striation:
    """The striation score of one map, with the layer and residual shares."""
    ss_hidden, ss_layer, ss_total = (float(x) for x in _sums_of_squares(a))
    n_layers, n_hidden = a.shape
    noise = (n_hidden - 1) / (n_layers * n_hidden - 1) if n_layers * n_hidden > 1 else 0.0
    if ss_total <= 0:
        return Striation(0.0, 0.0, 0.0, noise)
    hidden, layer = ss_hidden / ss_total, ss_layer / ss_total
    return Striation(hidden, layer, max(0.0, 1.0 - hidden - layer), noise)


def index_profile(a: np.ndarray) -> np.ndarray:
    """Magnitude per hidden index of a ``(layer, hidden)`` map: the sum over layers."""
    return np.asarray(a, dtype=np.float64).sum(axis=0)


@dataclass
class TopK:
    indices: list[int]
    shares: list[float]
    """Each index's share of the total magnitude (over all indices)."""

    @property
    def total_share(self) -> float:
        return float(sum(self.shares))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_share": self.total_share}


def top_k(profile: np.ndarray, k: int) -> TopK:
    """The ``k`` largest entries of a per-index magnitude profile, largest first (ties:
    lower index first)."""
    p = np.asarray(profile, dtype=np.float64)
    order = np.lexsort((np.arange(p.size), -p))[: min(k, p.size)]
    total = p.sum()
    shares = p[order] / total if total > 0 else np.zeros(order.size)
    return TopK([int(i) for i in order], [float(s) for s in shares])


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks); 0 if either is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def most_often_first(profiles: Sequence[np.ndarray]) -> tuple[int, int]:
    """The index most often ranked first across profiles, and how often (ties: lower index)."""
    counts = Counter(top_k(p, 1).indices[0] for p in profiles)
    index, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return index, count


def consistency(profiles: Mapping[str, np.ndarray], k: int) -> dict[str, Any]:
    """How far runs agree on their dominant indices: pairwise Jaccard overlap of the top-k
    sets, Spearman correlation over all indices and over the union of the two top-k sets,
    the index most often first, and how many runs have each index in their top k."""
    names = list(profiles)
    tops = {n: top_k(profiles[n], k).indices for n in names}
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            union = sorted(set(tops[a]) | set(tops[b]))
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "jaccard": jaccard(tops[a], tops[b]),
                    "shared": sorted(set(tops[a]) & set(tops[b])),
                    "spearman_all": spearman(profiles[a], profiles[b]),
                    "spearman_top_k_union": spearman(profiles[a][union], profiles[b][union]),
                }
            )
    first, count = most_often_first([profiles[n] for n in names])
    in_top = Counter(i for n in names for i in tops[n])
    return {
        "k": k,
        "runs": names,
        "top_k": tops,
        "pairs": pairs,
        "mean_jaccard": float(np.mean([p["jaccard"] for p in pairs])) if pairs else None,
        "most_often_first": {"index": first, "runs": count, "of": len(names)},
        "top_k_counts": [{"index": i, "runs": c} for i, c in sorted(in_top.items(), key=lambda t: (-t[1], t[0]))[:k]],
    }


def hoyer(x: np.ndarray) -> np.ndarray:
    """Hoyer sparsity over the last axis of ``|x|``; 0 for an all-zero vector."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    n = a.shape[-1]
    l1, l2 = a.sum(-1), np.sqrt((a**2).sum(-1))
    ratio = np.divide(l1, l2, out=np.full_like(l1, np.sqrt(n)), where=l2 > 0)
    return (np.sqrt(n) - ratio) / (np.sqrt(n) - 1) if n > 1 else np.zeros_like(l1)


def top_fraction_share(x: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """Share of the total ``|x|`` (last axis) held by its largest ``fraction`` of values
    (at least one value)."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    m = max(1, int(round(fraction * a.shape[-1])))
    top = -np.partition(-a, m - 1, axis=-1)[..., :m]
    total = a.sum(-1)
    return np.divide(top.sum(-1), total, out=np.zeros_like(total), where=total > 0)


def per_token_stats(outputs: np.ndarray, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Per token of ``(tokens, layer, hidden)``: Hoyer sparsity, top-1% share, striation
    score of its ``|output|`` map, and L2 norm."""
    parts: dict[str, list[np.ndarray]] = {"hoyer": [], "top1pct_share": [], "striation": [], "l2": []}
    for start in range(0, outputs.shape[0], chunk):
        block = np.abs(np.asarray(outputs[start : start + chunk], dtype=np.float64))
        flat = block.reshape(block.shape[0], -1)
        parts["hoyer"].append(hoyer(flat))
        parts["top1pct_share"].append(top_fraction_share(flat, 0.01))
        parts["striation"].append(striation_scores(block))
        parts["l2"].append(np.sqrt((flat**2).sum(-1)))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def describe(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}


def coincidence(irm_top: Sequence[int], host_signal: np.ndarray, k: int) -> dict[str, Any]:
    """Do the IRM's dominant indices coincide with a host's outlier indices? Overlap of the
    two top-k sets against its chance expectation ``k * k / H``, and the rank (1 = largest)
    of each IRM index in the host's signal. A constant signal has no outliers: no overlap."""
    signal = np.asarray(host_signal, dtype=np.float64)
    if np.ptp(signal) == 0:  # e.g. an untrained norm's gain of ones: no outliers to match
        return {"host_top_k": [], "shared": [], "overlap": None, "expected_by_chance": None, "constant": True}
    host_top = top_k(signal, k).indices
    ranks = np.empty(signal.size, dtype=np.int64)
    ranks[np.lexsort((np.arange(signal.size), -signal))] = np.arange(1, signal.size + 1)
    shared = sorted(set(irm_top[:k]) & set(host_top))
    return {
        "host_top_k": host_top,
        "shared": shared,
        "overlap": len(shared),
        "expected_by_chance": k * k / signal.size,
        "irm_index_ranks_in_host": {int(i): int(ranks[i]) for i in irm_top[:k]},
        "constant": False,
    }
