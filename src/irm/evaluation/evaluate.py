"""Evaluate adapters (IRMs, low-rank IRMs, steering vectors) against the bare host.

Every condition -- the host alone, and each adapter at each strength -- generates for the
same prompts with the same seeds and decoding, and is measured on:

``target`` / ``target_top`` / ``target_gain``
    the validated emotion scorer's probability of the target emotion, the share of
    generations whose top emotion is the target, and the paired per-generation gain in
    that probability over the host alone (same prompt, same seed);
``content_kept`` / ``content_kept_median``
    the share of the content words of the host's own answer to the same prompt (same seed,
    same sample) that the generation keeps (:mod:`irm.evaluation.content`): 1 for the host
    itself, near 0 for an answer that has dropped the subject; its mean and its median;
``valence``
    VADER compound score, -1 (negative) to +1 (positive);
``perplexity``
    of each continuation under the bare host (see :func:`irm.evaluation.metrics.continuation_perplexity`);
``distinct_1`` / ``distinct_2`` / ``repetition`` / ``length``
    corpus distinct-n, per-text seq-rep-4 and continuation length in host tokens;
``drift``
    mean ``KL(P_adapter || P_host)`` of next-token distributions over the prompt positions.

Every value is a mean with a 95% bootstrap interval over generations (over prompts for
``drift``; over texts, resampled as a whole corpus, for distinct-n).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from irm.core.adapters import Adapter, adapter_kind
from irm.core.attach import attach, check_strength
from irm.core.config import IRMConfig
from irm.errors import IRMError
from irm.evaluation.content import content_kept
from irm.evaluation.metrics import (
    Estimate,
    bootstrap_ci,
    continuation_perplexity,
    distinct_n,
    prompt_kl,
    repetition_rate,
)
from irm.evaluation.scoring import LABELS, EmotionScore
from irm.hosts.generation import Generation, generate

METRICS: dict[str, str] = {
    "target": "p(target)",
    "target_top": "top = target",
    "target_gain": "gain vs host",
    "content_kept": "content kept",
    "content_kept_median": "content kept (median)",
    "valence": "valence",
    "perplexity": "perplexity",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "repetition": "rep-4",
    "length": "tokens",
    "drift": "KL drift",
}
LEAD_METRICS = ("target", "content_kept")
"""The columns every table of metrics starts with: what the adapter is for, and what it costs the answer."""
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "alignment": ("target_top", "target_gain", "content_kept_median", "valence"),
    "fluency": ("perplexity", "distinct_1", "distinct_2", "repetition", "length"),
    "drift": ("drift",),
}
"""How the other metrics are grouped in tables (``irm evaluate``'s console, the HTML report),
each table led by :data:`LEAD_METRICS`."""
HOST = "host"


class Scorer(Protocol):
    def score(self, texts: Sequence[str]) -> list[EmotionScore]: ...


@dataclass
class Condition:
    """One row of the report: ``adapter`` (or the host alone) at ``strength``."""

    name: str
    adapter: str
    kind: str
    strength: float
    metrics: dict[str, Estimate] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "adapter": self.adapter,
            "kind": self.kind,
            "strength": self.strength,
            "metrics": {k: e._asdict() for k, e in self.metrics.items()},
        }


@dataclass
class EvalReport:
    host: str
    target_emotion: str
    prompts: int
    samples: int
    settings: dict[str, Any]
    conditions: list[Condition]
    generations: list[dict[str, Any]]

    def get(self, adapter: str, strength: float | None = None) -> Condition:
        for c in self.conditions:
            if c.adapter == adapter and (strength is None or c.strength == strength):
                return c
        raise KeyError(f"no condition {adapter} x{strength}")

    def curves(self) -> dict[str, list[dict[str, Any]]]:
        """Per adapter, the alignment-versus-fluency curve over strengths (0 = host alone)."""
        host = self.get(HOST)
        out: dict[str, list[dict[str, Any]]] = {}
        for c in self.conditions:
            if c.adapter != HOST:
                out.setdefault(c.adapter, [_curve_point(0.0, host)]).append(_curve_point(c.strength, c))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "target_emotion": self.target_emotion,
            "prompts": self.prompts,
            "samples": self.samples,
            "settings": self.settings,
            "conditions": [c.to_dict() for c in self.conditions],
            "curves": self.curves(),
        }


CURVE_METRICS = ("target", "content_kept", "perplexity", "distinct_2")
"""What each point of a strength curve holds."""


def _curve_point(strength: float, c: Condition) -> dict[str, Any]:
    return {"strength": strength, **{m: c.metrics[m]._asdict() for m in CURVE_METRICS if m in c.metrics}}


def target_emotion(config: IRMConfig) -> str | None:
    """The emotion an adapter was made for: ``extra["emotion"]``, else read from the name of
    its training data (``builtin:anger``, ``anger_rows.csv`` ...); None when unknown."""
    if config.extra.get("emotion") in LABELS:
        return str(config.extra["emotion"])
    source = str(config.extra.get("data") or config.extra.get("target") or "")
    name = source.removeprefix("builtin:")
    name = Path(name).stem.lower() if name else ""
    return next((label for label in LABELS if label != "neutral" and name.startswith(label)), None)


def resolve_emotion(adapters: dict[str, Adapter], emotion: str | None = None) -> str:
    """``emotion`` if given, else the one emotion the adapters name (those that name none
    are left out); an :class:`IRMError` when they name none or several."""
    if emotion is not None:
        return emotion
    found = sorted({target_emotion(a.config) for a in adapters.values()} - {None})
    if len(found) != 1:
        raise IRMError(
            "cannot tell the target emotion from the adapters" + (f" (they say {', '.join(found)})" if found else ""),
            hint="pass --emotion anger (or sadness, joy)",
        )
    return found[0]


def evaluate(
    host: Any,
    adapters: dict[str, Adapter],
    prompts: Sequence[str],
    *,
    target: str,
    strengths: Sequence[float] = (1.0,),
    samples: int = 1,
    seed: int = 0,
    max_new_tokens: int = 48,
    greedy: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    chat: bool = True,
    n_boot: int = 1000,
    scorer: Scorer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Generate with the host alone and with every adapter at every non-zero strength, and
    measure each condition (see the module docstring). ``progress(done, total)`` is called
    after each condition's generations and after scoring and perplexity."""
    if target not in LABELS:
        raise IRMError(f"unknown target emotion {target!r}", hint=f"use one of {', '.join(LABELS)}")
    if not prompts:
        raise IRMError("no prompts to evaluate on")
    if samples < 1 or (greedy and samples > 1):
        raise IRMError(f"bad --samples {samples}", hint="use >= 1 samples per prompt, and 1 with greedy decoding (it is deterministic)")
    strengths = [check_strength(s) for s in strengths if s != 0]
    if adapters and not strengths:
        raise IRMError("no non-zero strength to evaluate the adapters at", hint="e.g. --strength 0,1 or --strength 0.5,1,2")
    plan: list[tuple[str, Adapter | None, float]] = [(HOST, None, 0.0)]
    plan += [(name, adapter, s) for name, adapter in adapters.items() for s in strengths]
    options = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, top_p=top_p, chat=chat)

    steps = len(plan) + 2
    report_progress = progress or (lambda done, total: None)
    report_progress(0, steps)
    runs: list[list[Generation]] = []
    drifts: list[list[float]] = []
    for _, adapter, strength in plan:
        if adapter is None:
            runs.append(_generate(host, prompts, samples, seed, options))
            drifts.append([0.0] * len(prompts))
        else:
            with attach(host, adapter, strength=strength):
                runs.append(_generate(host, prompts, samples, seed, options))
            drifts.append(prompt_kl(host, adapter, prompts, strength=strength, chat=chat))
        report_progress(len(runs), steps)

    flat = [g for run in runs for g in run]
    scores = (scorer or _default_scorer()).score([g.text for g in flat])
    report_progress(len(plan) + 1, steps)
    ppl = continuation_perplexity(host, [g.prompt for g in flat], [g.token_ids for g in flat], chat=chat)
    report_progress(steps, steps)
    per_run = len(prompts) * samples
    host_target = [s.probs[target] for s in scores[:per_run]]
    conditions, records = [], []
    for i, ((name, adapter, strength), run, drift) in enumerate(zip(plan, runs, drifts)):
        sc, pp = scores[i * per_run : (i + 1) * per_run], ppl[i * per_run : (i + 1) * per_run]
        kept = [content_kept(h.text, g.text) for h, g in zip(runs[0], run)]  # runs[0]: the host alone, same prompts and seeds
        kind = HOST if adapter is None else adapter_kind(adapter.config)
        label = HOST if adapter is None else f"{name} x{strength:g}"
        measured = _measure(run, sc, pp, drift, host_target, kept, target, n_boot, seed)
        conditions.append(Condition(label, name, kind, strength, measured))
        for j, (g, s) in enumerate(zip(run, sc)):
            records.append(
                {
                    "condition": label,
                    "adapter": name,
                    "strength": strength,
                    "prompt": g.prompt,
                    "sample": j // len(prompts),
                    "text": g.text,
                    "tokens": len(g.token_ids),
                    "top": s.top,
                    f"p_{target}": round(s.probs[target], 4),
                    "valence": round(s.valence, 4),
                    "content_kept": round(kept[j], 4) if math.isfinite(kept[j]) else None,
                    "perplexity": round(pp[j], 3) if math.isfinite(pp[j]) else None,
                }
            )
    settings = {
        "seed": seed,
        "n_boot": n_boot,
        "confidence": 0.95,
        "kl": "KL(P_adapter || P_host), nats, mean over prompt positions",
        "strengths": strengths,
        **options,
    }
    return EvalReport(host.name, target, len(prompts), samples, settings, conditions, records)


def _measure(
    run: list[Generation],
    scores: list[EmotionScore],
    ppl: list[float],
    drift: list[float],
    host_target: list[float],
    kept: list[float],
    target: str,
    n_boot: int,
    seed: int,
) -> dict[str, Estimate]:
    """Every metric of one condition, each a mean with its bootstrap interval."""
    texts = [g.text for g in run]
    probs = [s.probs[target] for s in scores]
    values = {
        "target": probs,
        "target_top": [float(s.top == target) for s in scores],
        "target_gain": [p - h for p, h in zip(probs, host_target)],
        "content_kept": kept,
        "valence": [s.valence for s in scores],
        "perplexity": ppl,
        "repetition": [repetition_rate(t) for t in texts],
        "length": [float(len(g.token_ids)) for g in run],
        "drift": drift,
    }
    ci = {k: bootstrap_ci(v, n_boot=n_boot, seed=seed) for k, v in values.items()}
    for n in (1, 2):
        ci[f"distinct_{n}"] = bootstrap_ci(texts, statistic=lambda ts, n=n: distinct_n(ts, n), n_boot=n_boot, seed=seed, bounds=(0, 1))
    measured = [k for k in kept if math.isfinite(k)]  # NaN: the host's answer had no content words
    ci["content_kept_median"] = bootstrap_ci(measured, statistic=lambda v: float(np.median(v)), n_boot=n_boot, seed=seed, bounds=(0, 1))
    return {k: ci[k] for k in METRICS}


def _generate(host: Any, prompts: Sequence[str], samples: int, seed: int, options: dict[str, Any]) -> list[Generation]:
    """``samples`` passes over ``prompts``; pass ``k`` uses seed ``seed + 100003 k`` in every condition."""
    return [g for k in range(samples) for g in generate(host, prompts, seed=seed + 100_003 * k, **options)]


def _default_scorer() -> Scorer:
    from irm.evaluation.scoring import EmotionScorer

    return EmotionScorer()


# ---------------------------------------------------------------- writing
REPORT_FILES = ("report.json", "report.csv", "generations.jsonl", "curve.png")
"""What :func:`write_report` writes into its folder."""


def check_report_dir(out: str | Path, *, overwrite: bool, option: str = "--out") -> Path:
    """Check, before any work, that an evaluation may be written to ``out``: a folder (new or
    existing, not a link or a file) that holds no evaluation yet, unless ``overwrite``; then
    only the evaluation's own files (:data:`REPORT_FILES`) are replaced, nothing else there."""
    from irm.core.io import check_output_dir, check_output_file

    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        check_output_dir(out, overwrite=False, is_ours=lambda _: False, kind="an evaluation", option=option)
    existing = [name for name in REPORT_FILES if (out / name).exists() or (out / name).is_symlink()]
    if existing and not overwrite:
        raise IRMError(
            f"{option} {out} already holds an evaluation ({', '.join(existing)})",
            hint=f"pass --overwrite to replace it, or choose another {option}",
        )
    for name in REPORT_FILES:  # no file of ours may be a folder or a link; the folder must be writable
        check_output_file(out / name, overwrite=True, option=option)
    return out


def write_report(report: EvalReport, out: str | Path) -> dict[str, Path]:
    """``report.json``, ``report.csv`` (one row per condition, mean/lo/hi per metric),
    ``generations.jsonl`` and ``curve.png`` in ``out``, written atomically together: a
    crash or a full disk leaves the old files (or none), never half a report."""
    import io

    from irm.core.io import atomic_write_all

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in REPORT_FILES}
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["condition", "adapter", "kind", "strength"] + [f"{m}_{p}" for m in METRICS for p in Estimate._fields])
    for c in report.conditions:
        writer.writerow([c.name, c.adapter, c.kind, c.strength] + [v for m in METRICS for v in c.metrics[m]])
    generations = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in report.generations)
    atomic_write_all(
        [
            (paths["report.json"], (json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8")),
            (paths["report.csv"], table.getvalue().encode("utf-8")),
            (paths["generations.jsonl"], generations.encode("utf-8")),
            (paths["curve.png"], lambda path: plot_curves(report, path, format="png")),
        ]
    )
    return paths


CURVE_PANELS = (
    ("perplexity", "perplexity under the bare host (lower = more fluent)"),
    ("content_kept", "content kept: share of the host answer's content words"),
    ("distinct_2", "distinct-2 (higher = more varied)"),
)
"""The x axes of :func:`plot_curves`, one panel each; the y axis is always p(target)."""


def plot_curves(report: EvalReport, path: str | Path, *, format: str | None = None) -> None:
    """Target-emotion probability against perplexity, content kept and distinct-2 (a panel
    each), one line per adapter over its strengths (from the host alone at 0), with 95%
    intervals on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(5 * len(CURVE_PANELS), 4.5), sharey=True)
    curves = report.curves()
    for ax, (metric, label) in zip(axes, CURVE_PANELS):
        for name, points in curves.items():
            points = [p for p in points if metric in p]
            xs, ys = [p[metric]["mean"] for p in points], [p["target"]["mean"] for p in points]
            xerr = [[x - p[metric]["lo"] for x, p in zip(xs, points)], [p[metric]["hi"] - x for x, p in zip(xs, points)]]
            yerr = [[y - p["target"]["lo"] for y, p in zip(ys, points)], [p["target"]["hi"] - y for y, p in zip(ys, points)]]
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=name)
            for x, y, p in zip(xs, ys, points):
                ax.annotate(f"x{p['strength']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"p({report.target_emotion}) from the emotion scorer")
    fig.suptitle(f"alignment vs fluency and content on {report.host}")
    if curves:
        axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format=format)
    plt.close(fig)
