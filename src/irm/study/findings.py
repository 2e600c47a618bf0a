"""``findings.json``: one machine-readable summary of a finished study, read from the files
its stages wrote (nothing is measured here).

``row`` is the study's line of the cross-host table (``scripts/study_tables.py``):

- ``striation`` per layer set: mean, min and max over runs against the noise level
  ``(H - 1) / (L * H - 1)`` of that layer set;
- ``top_index``: the index ranked first in most runs (ties: in most runs' top k, then the
  lower index), its mean share of the total magnitude (an even spread gives ``1 / H``), and
  in how many runs and alignments it is among the top k;
- ``host_outliers``: the host's massive-activation dimensions (peak ``|activation|`` of the
  residual stream at least ``massive_ratio`` times the median dimension's), the rank of
  each IRM's top index among all host dimensions by that peak, the rank of each massive
  dimension in the IRMs' profiles, and how many IRM top-k slots hold a host top-k index
  against chance;
- ``ablation``: the share of the IRM's effect on its target emotion removed by zeroing its
  top k indices, against k random ones;
- ``gradient``: Spearman correlation between the host's |loss gradient| per index at the
  injection points and the IRM's profile, and the overlap of their top k against chance;
- ``tokens_per_second``: real (non-padding) training tokens per second, over runs;
- ``basis_test``: the study's basis-test settings that are set (optimizer, rotations, host
  edit; ``{}`` for the paper's battery);
- ``irm_basis``: with an output rotation, the striation, top index and consistency of the
  IRMs' output in their own basis (before ``R_l``), as above (None without rotation);
- ``logit_lens``: the tokens the top index promotes through the final norm and LM head,
  those each alignment's last injected layer's mean output promotes, and the share of the
  full logit change that injecting only the last k layers reproduces (per layer set, over
  runs).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import mean, median
from typing import Any

import numpy as np

from irm.analysis.statistics import index_profile
from irm.study.config import StudyConfig, StudyDir, alignment_label
from irm.training.rundir import RunDir
from irm.training.sweep import SweepRun

FINDINGS_FORMAT = "irm-study-findings/1"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def spread(values: Sequence[float | None]) -> dict[str, float | None] | None:
    """Mean, median, min and max of the values that are numbers (None if there are none)."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not xs:
        return None
    return {"mean": mean(xs), "median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def chance_jaccard(k: int, hidden: int) -> float:
    """The expected Jaccard overlap of two independent random k-subsets of ``hidden`` indices."""
    k = min(k, hidden)
    total = math.comb(hidden, k)
    return sum(math.comb(k, i) * math.comb(hidden - k, k - i) / total * i / (2 * k - i) for i in range(0, k + 1))


def analysis_runs(summary: Any, runs: Sequence[SweepRun]) -> dict[str, dict[str, Any]]:
    """The per-run summaries of an analysis, by run name (one input writes its summary alone)."""
    if not isinstance(summary, Mapping):
        return {}
    if isinstance(summary.get("runs"), list):
        return {str(r.get("label")): r for r in summary["runs"] if isinstance(r, Mapping)}
    return {runs[0].name: dict(summary)} if runs else {}


def _profile(study: StudyDir, name: str, single: bool, file: str = "mean_abs_map.npy") -> np.ndarray | None:
    path = (study.analysis if single else study.analysis / name) / file
    return index_profile(np.load(path)) if path.is_file() else None


def _ranks(signal: np.ndarray) -> np.ndarray:
    """Rank of each index by ``signal``, 1 = largest (ties: lower index first)."""
    ranks = np.empty(signal.size, dtype=np.int64)
    ranks[np.lexsort((np.arange(signal.size), -signal))] = np.arange(1, signal.size + 1)
    return ranks


def _alignment(run: SweepRun) -> str:
    return alignment_label(str(run.settings["data"]))


def _pair_group(a: SweepRun, b: SweepRun) -> str:
    same_alignment = _alignment(a) == _alignment(b)
    same_layers = a.settings["layers"] == b.settings["layers"]
    if same_alignment and same_layers:
        return "same_alignment_other_seed"
    if not same_alignment and same_layers and a.settings["seed"] == b.settings["seed"]:
        return "other_alignment_same_seed"
    if same_alignment:
        return "same_alignment_other_layers"
    return "other"


def build_findings(config: StudyConfig, study: StudyDir, runs: Sequence[SweepRun], stage_seconds: Mapping[str, float]) -> dict[str, Any]:
    """The findings of a study whose stages have all run."""
    analysis = _read(study.analysis / "summary.json")
    single = not (isinstance(analysis, Mapping) and "runs" in analysis)
    per_run = analysis_runs(analysis, runs)
    gradients = analysis_runs(_read(study.gradients / "summary.json"), runs)
    by_name = {r.name: r for r in runs}
    meta = _read(RunDir(runs[0].run_dir).record / "meta.json") or {}
    host = meta.get("host") or {"name": config.host}
    k = config.top_k

    outliers = _read((study.analysis if single else study.analysis / runs[0].name) / "host_outliers.json") or {}
    residual = outliers.get("residual_max_abs") or {}
    massive = [
        {"index": i, "peak": v, "ratio_to_median": r}
        for i, v, r in zip(residual.get("top_k", []), residual.get("values", []), residual.get("ratio_to_median", []))
        if r is not None and r >= config.massive_ratio
    ]
    host_top = [
        {"index": i, "peak": v, "ratio_to_median": r}
        for i, v, r in zip(residual.get("top_k", []), residual.get("values", []), residual.get("ratio_to_median", []))
    ]

    rows: list[dict[str, Any]] = []
    profiles: dict[str, np.ndarray] = {}
    own_profiles: dict[str, np.ndarray] = {}
    for run in runs:
        summary = RunDir(run.run_dir).read_summary()
        found = per_run.get(run.name, {})
        profile = _profile(study, run.name, single)
        if profile is not None:
            profiles[run.name] = profile
        own_profile = _profile(study, run.name, single, "mean_abs_map_irm_basis.npy")
        if own_profile is not None:
            own_profiles[run.name] = own_profile
        own = found.get("irm_basis") or {}
        own_top = (own.get("top_k") or {}) if own.get("rotated") else {}
        top = found.get("top_k") or {"indices": [], "shares": []}
        residual_match = (found.get("coincidence_with_host") or {}).get("residual_max_abs") or {}
        grad = gradients.get(run.name, {}).get("host_gradients") or {}
        irm_ranks = _ranks(profile) if profile is not None else None
        rows.append(
            {
                "name": run.name,
                "alignment": _alignment(run),
                "data": run.settings["data"],
                "seed": run.settings["seed"],
                "layers": run.settings["layers"],
                "injected_layers": len(found.get("layers") or summary.get("layers") or []),
                "steps": summary.get("global_step"),
                "train_loss": summary.get("train_loss"),
                "val_loss": summary.get("val_loss"),
                "test_loss": summary.get("test_loss"),
                "tokens_per_second": summary.get("real_tokens_per_second"),
                "train_seconds": summary.get("train_seconds"),
                "recorded_tokens": found.get("tokens"),
                "striation": (found.get("striation") or {}).get("score"),
                "noise_level": (found.get("striation") or {}).get("noise_level"),
                "layer_share": (found.get("striation") or {}).get("layer_share"),
                "top_indices": top.get("indices", []),
                "top_shares": top.get("shares", []),
                "irm_top_ranks_in_host_residual": residual_match.get("irm_index_ranks_in_host", {}),
                "shared_with_host_top_k": residual_match.get("shared", []),
                "massive_dim_ranks_in_irm": {str(m["index"]): int(irm_ranks[m["index"]]) for m in massive} if irm_ranks is not None else {},
                "gradient_spearman": grad.get("spearman_with_irm_profile"),
                "gradient_top_k_overlap": (grad.get("coincidence_with_irm") or {}).get("overlap"),
                "gradient_adjacent_layer_cosine": grad.get("mean_cosine_adjacent_layers"),
                "gradient_top_indices": grad.get("top_indices", [])[:k],
                "irm_basis_striation": (own.get("striation") or {}).get("score") if own.get("rotated") else None,
                "irm_basis_top_indices": own_top.get("indices", []),
                "irm_basis_top_shares": own_top.get("shares", []),
                "logit_lens": found.get("logit_lens"),
            }
        )
    hidden = int(host.get("hidden_size") or (next(iter(profiles.values())).size if profiles else 1))
    ablations = _ablations(study, runs)
    row = {
        "host": host.get("name", config.host),
        "architecture": host.get("architecture"),
        "hidden_size": hidden,
        "num_layers": host.get("num_layers"),
        "runs": len(runs),
        "alignments": [alignment_label(a) for a in config.alignments],
        "seeds": config.seeds,
        "layer_sets": list(config.layers),
        "steps": config.steps,
        "striation": _striation(rows, config.layers),
        "top_index": _top_index(rows, profiles, k, hidden),
        "consistency": _consistency(rows, by_name, k, hidden),
        "host_outliers": _outliers(rows, massive, host_top, k, hidden),
        "ablation": _ablation_row(ablations, config.ablation_k),
        "gradient": {
            "spearman_with_irm_profile": spread([r["gradient_spearman"] for r in rows]),
            "top_k_overlap": spread([r["gradient_top_k_overlap"] for r in rows]),
            "expected_overlap_by_chance": k * k / hidden,
            "adjacent_layer_cosine": spread([r["gradient_adjacent_layer_cosine"] for r in rows]),
        },
        "tokens_per_second": spread([r["tokens_per_second"] for r in rows]),
        "test_loss": spread([r["test_loss"] for r in rows]),
        "basis_test": config.basis_test(),
        "irm_basis": _irm_basis(rows, own_profiles, by_name, config.layers, k, hidden),
    }
    row["logit_lens"] = _lens(rows, row["top_index"], config.layers)
    return {
        "format": FINDINGS_FORMAT,
        "host": host,
        "settings": config.experiment(),
        "row": row,
        "runs": rows,
        "ablation": ablations,
        "recurrence": _recurrence(rows, k),
        "stages": {name: {"seconds": round(s, 1)} for name, s in stage_seconds.items()},
        "total_seconds": round(sum(stage_seconds.values()), 1),
    }


def _striation(rows: Sequence[Mapping[str, Any]], layer_sets: Sequence[str]) -> dict[str, Any]:
    out = {}
    for layers in layer_sets:
        group = [r for r in rows if r["layers"] == layers and r["striation"] is not None]
        if not group:
            continue
        noise = group[0]["noise_level"]
        stats = spread([r["striation"] for r in group]) or {}
        out[layers] = {**stats, "noise_level": noise, "mean_over_noise": stats["mean"] / noise if noise else None}
    return out


def _top_index(rows: Sequence[Mapping[str, Any]], profiles: Mapping[str, np.ndarray], k: int, hidden: int) -> dict[str, Any] | None:
    firsts = Counter(r["top_indices"][0] for r in rows if r["top_indices"])
    if not firsts:
        return None
    in_top = Counter(i for r in rows for i in r["top_indices"][:k])
    index = min(firsts, key=lambda i: (-firsts[i], -in_top[i], i))
    shares = [float(p[index] / p.sum()) for p in profiles.values() if p.sum() > 0]
    ranks = [int(_ranks(p)[index]) for p in profiles.values()]
    return {
        "index": int(index),
        "first_in_runs": firsts[index],
        "in_top_k_runs": in_top[index],
        "runs": len(rows),
        "alignments_in_top_k": sorted({r["alignment"] for r in rows if index in r["top_indices"][:k]}),
        "mean_share": mean(shares) if shares else None,
        "even_share": 1 / hidden,
        "median_rank": median(ranks) if ranks else None,
        "k": k,
    }


def _irm_basis(
    rows: Sequence[Mapping[str, Any]],
    profiles: Mapping[str, np.ndarray],
    by_name: Mapping[str, SweepRun],
    layer_sets: Sequence[str],
    k: int,
    hidden: int,
) -> dict[str, Any] | None:
    """Striation, top index and consistency of the rotated runs' output in the IRMs' own basis."""
    own = [
        {**r, "striation": r["irm_basis_striation"], "top_indices": r["irm_basis_top_indices"]}
        for r in rows
        if r["irm_basis_striation"] is not None
    ]
    if not own:
        return None
    return {
        "runs": len(own),
        "striation": _striation(own, layer_sets),
        "top_index": _top_index(own, profiles, k, hidden),
        "consistency": _consistency(own, by_name, k, hidden),
    }


def _lens(rows: Sequence[Mapping[str, Any]], top: Mapping[str, Any] | None, layer_sets: Sequence[str]) -> dict[str, Any] | None:
    """The logit lens's headline: what the top index and the last layer's mean output
    promote, and the direct effect of the last k layers."""
    lensed = [r for r in rows if r.get("logit_lens")]
    if not lensed:
        return None
    index_tokens = None
    if top is not None:
        for r in lensed:
            tokens = r["logit_lens"].get("top_indices", {}).get(str(top["index"]))
            if tokens is not None:
                index_tokens = {"index": top["index"], "promoted": tokens, "run": r["name"]}
                break
    last_mean: dict[str, list[str]] = {}
    for r in lensed:
        last_mean.setdefault(r["alignment"], r["logit_lens"].get("last_layer_mean", []))
    direct: dict[str, dict[str, Any]] = {}
    for layers in layer_sets:
        shares = [r["logit_lens"].get("direct_effect_share") or {} for r in lensed if r["layers"] == layers]
        depths = sorted({int(d) for s in shares for d in s})
        if depths:
            direct[layers] = {str(d): spread([s.get(str(d)) for s in shares]) for d in depths}
    return {"top_index": index_tokens, "last_layer_mean_promotes": last_mean, "direct_effect_share": direct}


def _recurrence(rows: Sequence[Mapping[str, Any]], k: int) -> list[dict[str, Any]]:
    """Indices in the most runs' top k, with the runs and alignments they are in."""
    counts = Counter(i for r in rows for i in r["top_indices"][:k])
    return [
        {
            "index": int(i),
            "runs": c,
            "first_in_runs": sum(1 for r in rows if r["top_indices"][:1] == [i]),
            "alignments": sorted({r["alignment"] for r in rows if i in r["top_indices"][:k]}),
        }
        for i, c in sorted(counts.items(), key=lambda t: (-t[1], t[0]))[:k]
    ]


def _consistency(rows: Sequence[Mapping[str, Any]], by_name: Mapping[str, SweepRun], k: int, hidden: int) -> dict[str, Any]:
    groups: dict[str, list[float]] = {}
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            if not a["top_indices"] or not b["top_indices"]:
                continue
            sa, sb = set(a["top_indices"][:k]), set(b["top_indices"][:k])
            jaccard = len(sa & sb) / len(sa | sb)
            groups.setdefault("all_pairs", []).append(jaccard)
            groups.setdefault(_pair_group(by_name[a["name"]], by_name[b["name"]]), []).append(jaccard)
    return {
        "k": k,
        "top_k_jaccard": {name: {"mean": mean(values), "pairs": len(values)} for name, values in groups.items()},
        "chance_jaccard": chance_jaccard(k, hidden),
    }


def _outliers(
    rows: Sequence[Mapping[str, Any]], massive: list[dict[str, Any]], host_top: list[dict[str, Any]], k: int, hidden: int
) -> dict[str, Any]:
    top1_ranks = [r["irm_top_ranks_in_host_residual"].get(str(r["top_indices"][0])) for r in rows if r["top_indices"]]
    all_ranks = [v for r in rows for v in r["irm_top_ranks_in_host_residual"].values()]
    return {
        "signal": "residual_max_abs",
        "massive_dims": massive,
        "host_top": host_top,
        "irm_top1_rank_in_host": spread(top1_ranks),
        "irm_top_k_rank_in_host": spread(all_ranks),
        "massive_dim_rank_in_irm": {
            str(m["index"]): spread([r["massive_dim_ranks_in_irm"].get(str(m["index"])) for r in rows]) for m in massive
        },
        "irm_top_k_slots_in_host_top_k": sum(len(r["shared_with_host_top_k"]) for r in rows),
        "slots": sum(min(k, len(r["top_indices"])) for r in rows),
        "expected_by_chance": len(rows) * k * k / hidden,
    }


def _ablations(study: StudyDir, runs: Sequence[SweepRun]) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        report = _read(study.ablation / f"{run.name}.json")
        if not isinstance(report, Mapping):
            continue
        random = [x for x in report.get("effect_removed_random") or [] if x is not None]
        out.append(
            {
                "run": run.name,
                "alignment": _alignment(run),
                "target": report.get("target"),
                "indices": report.get("indices"),
                "prompts": report.get("prompts"),
                "host_p_target": (report.get("host") or {}).get(f"p_{report.get('target')}"),
                "irm_p_target": (report.get("irm") or {}).get(f"p_{report.get('target')}"),
                "irm_effect": report.get("irm_effect"),
                "top_k_removed": report.get("effect_removed_ablated"),
                "random_k_removed": random,
                "random_k_removed_mean": mean(random) if random else None,
                "distinct_2": {
                    "irm": (report.get("irm") or {}).get("distinct_2"),
                    "top_k_zeroed": (report.get("ablated") or {}).get("distinct_2"),
                },
            }
        )
    return out


def _ablation_row(ablations: Sequence[Mapping[str, Any]], k: int) -> dict[str, Any]:
    return {
        "k": k,
        "top_k_removed": spread([a["top_k_removed"] for a in ablations]),
        "random_k_removed": spread([x for a in ablations for x in a["random_k_removed"]]),
        "per_alignment": {a["alignment"]: {"top_k": a["top_k_removed"], "random_k_mean": a["random_k_removed_mean"]} for a in ablations},
    }
