"""Ablate hidden indices of the IRM output during generation, against random indices.

Conditions, all greedy on the same prompts: ``host`` (no IRM), ``irm`` (IRM on),
``ablated`` (the chosen indices zeroed in every injected layer's vector), and ``draws``
conditions that zero as many indices drawn at random from the others. Each is scored by
the mean emotion probabilities (:class:`irm.evaluation.scoring.EmotionScorer`, if a scorer is given)
and two fluency numbers: mean generated tokens and distinct-2 (unique word bigrams over all
word bigrams, pooled over texts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from irm.core.attach import attach
from irm.core.network import IRM
from irm.errors import IRMError
from irm.evaluation.metrics import distinct_n
from irm.hosts.generation import Generation, generate
from irm.hosts.loading import Host


def zero_indices(indices: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """A ``transform`` for :func:`irm.attach` that zeroes ``indices`` of the hidden axis
    (``output[..., h, k]``) for every injected layer ``k``."""
    chosen = torch.as_tensor(sorted(set(int(i) for i in indices)), dtype=torch.long)

    def transform(output: Tensor) -> Tensor:
        out = output.clone()
        out[..., chosen.to(out.device), :] = 0
        return out

    return transform


def dominant_indices(host: Host, irm: IRM, prompts: Sequence[str], k: int, **options: Any) -> list[int]:
    """The ``k`` indices of largest mean ``|output|`` (summed over layers) while generating."""
    from irm.analysis.recording import record
    from irm.analysis.statistics import index_profile, mean_abs_map, top_k

    rec = record(host, irm, prompts, **options)
    return top_k(index_profile(mean_abs_map(rec.outputs)), k).indices


def check_indices(indices: Sequence[int], hidden_size: int) -> list[int]:
    chosen = sorted(set(int(i) for i in indices))
    bad = [i for i in chosen if not 0 <= i < hidden_size]
    if not chosen or bad:
        raise IRMError(
            f"indices {bad or 'none'} are not hidden indices of a hidden-{hidden_size} host",
            hint=f"pass indices between 0 and {hidden_size - 1}, e.g. --indices 5,17, or --indices auto",
        )
    if len(chosen) * 2 > hidden_size:
        raise IRMError(f"{len(chosen)} of {hidden_size} indices leave too few for random controls", hint="ablate fewer indices")
    return chosen


def text_metrics(gens: Sequence[Generation], scorer: Any | None) -> dict[str, float]:
    texts = [g.text for g in gens]
    metrics = {"mean_tokens": float(np.mean([len(g.token_ids) for g in gens])), "distinct_2": distinct_n(texts, 2)}
    if scorer is not None:
        scores = scorer.score(texts)
        for label in scores[0].probs:
            metrics[f"p_{label}"] = float(np.mean([s.probs[label] for s in scores]))
    return metrics


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a[k] - b[k] for k in a}


def ablate(
    host: Host,
    irm: IRM,
    indices: Sequence[int],
    prompts: Sequence[str],
    *,
    draws: int = 5,
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    chat: bool = True,
    scorer: Any | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """Generate under every condition and report the metrics, their changes from ``irm``,
    and (with a scorer) the share of the IRM's effect on the target emotion that the
    ablation removes. ``target`` defaults to the emotion the IRM raises most over the host."""
    chosen = check_indices(indices, host.hidden_size)
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat, seed=seed)

    def run(transform: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        with attach(host, irm, transform=transform):
            return text_metrics(generate(host, prompts, **options), scorer)

    host_metrics = text_metrics(generate(host, prompts, **options), scorer)
    irm_metrics = run()
    ablated = run(zero_indices(chosen))
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(host.hidden_size), chosen)
    random_sets = [sorted(int(i) for i in rng.choice(others, size=len(chosen), replace=False)) for _ in range(draws)]
    random_runs = [run(zero_indices(s)) for s in random_sets]
    report: dict[str, Any] = {
        "indices": chosen,
        "prompts": len(prompts),
        "draws": draws,
        "seed": seed,
        "host": host_metrics,
        "irm": irm_metrics,
        "ablated": ablated,
        "random": [{"indices": s, **m} for s, m in zip(random_sets, random_runs)],
        "change_ablated": _delta(ablated, irm_metrics),
    }
    if random_runs:
        changes = np.array([list(_delta(m, irm_metrics).values()) for m in random_runs])
        keys = list(irm_metrics)
        report["change_random_mean"] = dict(zip(keys, changes.mean(0).tolist()))
        report["change_random_std"] = dict(zip(keys, changes.std(0).tolist()))
    if scorer is not None:
        labels = [k.removeprefix("p_") for k in irm_metrics if k.startswith("p_")]
        if target is None:
            target = max(labels, key=lambda lab: irm_metrics[f"p_{lab}"] - host_metrics[f"p_{lab}"])
        elif target not in labels:
            raise IRMError(f"unknown target emotion {target!r}", hint=f"use one of {', '.join(labels)}")
        key = f"p_{target}"
        effect = irm_metrics[key] - host_metrics[key]
        report["target"] = target
        report["irm_effect"] = effect
        removed = lambda m: (irm_metrics[key] - m[key]) / effect if effect else None  # noqa: E731
        report["effect_removed_ablated"] = removed(ablated)
        report["effect_removed_random"] = [removed(m) for m in random_runs]
    return report
