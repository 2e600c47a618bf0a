"""The page of an ``irm study``: ``DIR/report.html``, drawn from ``DIR/findings.json`` and
the heatmaps of ``DIR/analysis/`` with the same templates and blocks as every irm report
(:mod:`irm.report.html`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from irm.report.html import Block, Section, image_block, key_values, raw_block, render_page, sig3, table

RUN_COLUMNS = (
    "name",
    "steps",
    "test_loss",
    "tokens_per_second",
    "striation",
    "noise_level",
    "layer_share",
    "top_indices",
    "irm_top_ranks_in_host_residual",
    "gradient_spearman",
    "gradient_top_k_overlap",
)


def _num(value: Any) -> str:
    return sig3(float(value)) if isinstance(value, (int, float)) else "-"


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def _spread(stats: Any, show: Any = _num) -> str:
    """``mean, median (min to max, n values)`` of a spread in findings.json, each number by ``show``."""
    if not isinstance(stats, Mapping):
        return "-"
    if stats.get("n", 0) <= 1:
        return str(show(stats.get("mean")))
    return f"mean {show(stats['mean'])}, median {show(stats['median'])} ({show(stats['min'])} to {show(stats['max'])}, {stats['n']} values)"


def headline_records(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The study's row of the cross-host table, one readable line per measure."""
    out = [
        {
            "measure": "host",
            "value": f"{row['host']} ({row.get('architecture')}, hidden {row['hidden_size']}, {row.get('num_layers')} layers)",
        }
    ]
    out.append(
        {
            "measure": "runs",
            "value": f"{row['runs']}: alignments {', '.join(row['alignments'])} x {row.get('seeds')} seed(s) x layer sets "
            f"{' / '.join(row.get('layer_sets', []))}, {row['steps']} steps each",
        }
    )
    for layers, s in (row.get("striation") or {}).items():
        out.append(
            {
                "measure": f"striation, layers {layers}",
                "value": f"{_spread(s)}; noise level {_num(s['noise_level'])} ({_num(s.get('mean_over_noise'))}x)",
            }
        )
    top = row.get("top_index")
    if top:
        out.append(
            {
                "measure": "top index",
                "value": f"{top['index']}: first in {top['first_in_runs']} of {top['runs']} runs, in the top {top['k']} of "
                f"{top['in_top_k_runs']} runs ({', '.join(top['alignments_in_top_k']) or '-'}); mean share {_pct(top['mean_share'])} "
                f"(an even spread: {_pct(top['even_share'])}); median rank {_num(top['median_rank'])}",
            }
        )
    jaccard = (row.get("consistency") or {}).get("top_k_jaccard") or {}
    if jaccard:
        parts = [f"{name.replace('_', ' ')} {_num(v['mean'])} ({v['pairs']} pairs)" for name, v in jaccard.items()]
        out.append({"measure": "top-k Jaccard", "value": "; ".join(parts) + f"; chance {_num(row['consistency']['chance_jaccard'])}"})
    host = row.get("host_outliers") or {}
    massive = ", ".join(f"{m['index']} ({_num(m['ratio_to_median'])}x median)" for m in host.get("massive_dims", [])) or "none"
    out.append({"measure": "host massive-activation dims", "value": massive})
    out.append(
        {
            "measure": "rank of each IRM's top index among the host's dims (by peak |activation|)",
            "value": _spread(host.get("irm_top1_rank_in_host")),
        }
    )
    for index, stats in (host.get("massive_dim_rank_in_irm") or {}).items():
        out.append({"measure": f"rank of massive dim {index} in the IRMs' profiles", "value": _spread(stats)})
    out.append(
        {
            "measure": "IRM top-k slots holding a host top-k dim",
            "value": f"{host.get('irm_top_k_slots_in_host_top_k')} of {host.get('slots')} (chance {_num(host.get('expected_by_chance'))})",
        }
    )
    ablation = row.get("ablation") or {}
    out.append(
        {
            "measure": f"ablation: share of the effect removed, top {ablation.get('k')} / random {ablation.get('k')}",
            "value": f"{_spread(ablation.get('top_k_removed'), _pct)} / {_spread(ablation.get('random_k_removed'), _pct)}",
        }
    )
    gradient = row.get("gradient") or {}
    out.append({"measure": "gradient: Spearman(|gradient|, IRM profile)", "value": _spread(gradient.get("spearman_with_irm_profile"))})
    out.append(
        {
            "measure": "gradient: top-k overlap with the IRM",
            "value": f"{_spread(gradient.get('top_k_overlap'))} (chance {_num(gradient.get('expected_overlap_by_chance'))})",
        }
    )
    out += basis_test_records(row)
    out.append({"measure": "training real tokens/s", "value": _spread(row.get("tokens_per_second"))})
    out.append({"measure": "test loss", "value": _spread(row.get("test_loss"))})
    return out


def basis_test_records(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The basis test's settings, the IRM-basis measures (with an output rotation) and the
    logit lens's headline, one readable line each."""
    out = []
    test = row.get("basis_test") or {}
    if test:
        out.append({"measure": "basis test", "value": ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in test.items())})
    own = row.get("irm_basis") or {}
    for layers, s in (own.get("striation") or {}).items():
        out.append(
            {
                "measure": f"striation in the IRMs' own basis (before R), layers {layers}",
                "value": f"{_spread(s)}; noise level {_num(s['noise_level'])} ({_num(s.get('mean_over_noise'))}x)",
            }
        )
    top = own.get("top_index")
    if top:
        out.append(
            {
                "measure": "top index in the IRMs' own basis",
                "value": f"{top['index']}: first in {top['first_in_runs']} of {top['runs']} runs; mean share {_pct(top['mean_share'])}",
            }
        )
    jaccard = (own.get("consistency") or {}).get("top_k_jaccard") or {}
    if jaccard:
        parts = [f"{name.replace('_', ' ')} {_num(v['mean'])} ({v['pairs']} pairs)" for name, v in jaccard.items()]
        out.append({"measure": "top-k Jaccard in the IRMs' own basis", "value": "; ".join(parts)})
    lens = row.get("logit_lens") or {}
    if lens.get("top_index"):
        out.append(
            {
                "measure": f"logit lens: tokens index {lens['top_index']['index']} promotes (through the final norm and LM head)",
                "value": ", ".join(repr(t) for t in lens["top_index"]["promoted"]),
            }
        )
    for alignment, tokens in (lens.get("last_layer_mean_promotes") or {}).items():
        out.append({"measure": f"logit lens: the last layer's mean output promotes ({alignment})", "value": ", ".join(map(repr, tokens))})
    for layers, depths in (lens.get("direct_effect_share") or {}).items():
        shares = "; ".join(f"last {d}: {_spread(stats, _pct)}" for d, stats in depths.items())
        out.append({"measure": f"direct effect: share of the full logit change, layers {layers}", "value": shares})
    return out


def study_sections(directory: Path, findings: Mapping[str, Any]) -> list[Section]:
    row = findings["row"]
    sections = [Section("Findings", [table(headline_records(row), ["measure", "value"])])]
    rotated = bool(row.get("irm_basis"))
    columns = [*RUN_COLUMNS, *(("irm_basis_striation", "irm_basis_top_indices") if rotated else ())]
    runs = [{k: r.get(k) for k in columns} for r in findings.get("runs", [])]
    sections.append(
        Section(
            "Runs",
            [
                table(runs, columns),
                Block(
                    "note",
                    text="irm_top_ranks_in_host_residual: rank of each IRM top index among the host's dims by peak |activation| (1 = largest).",
                ),
            ],
        )
    )
    sections.append(Section("Indices in the most runs' top k", [table(findings.get("recurrence", []))]))
    host = row.get("host_outliers") or {}
    sections.append(Section("The host's largest residual dimensions", [table(host.get("host_top", []), empty="(not measured)")]))
    ablations = [{k: v for k, v in a.items() if k != "distinct_2"} for a in findings.get("ablation", [])]
    sections.append(Section("Ablation: top k against random k", [table(ablations, empty="(no ablation)")]))
    heatmaps = []
    for path in sorted((directory / "analysis").glob("*/heatmap_mean.png")) + sorted((directory / "analysis").glob("heatmap_mean.png")):
        run = path.parent.name if path.parent.name != "analysis" else findings["runs"][0]["name"]
        heatmaps.append(image_block(path, f"mean |IRM output|: {run}"))
        heatmaps[-1].name = run
        own = path.with_name("heatmap_mean_irm_basis.png")
        if own.is_file():
            heatmaps.append(image_block(own, f"mean |IRM output| in the IRM's own basis (before R): {run}"))
            heatmaps[-1].name = f"{run} (IRM basis)"
    sections.append(Section("Mean |IRM output| per run (layer x hidden index)", heatmaps or [Block("note", text="(no heatmaps)")]))
    stages = [{"stage": name, "seconds": v["seconds"]} for name, v in findings.get("stages", {}).items()]
    stages.append({"stage": "total", "seconds": findings.get("total_seconds")})
    sections.append(Section("Time per stage", [table(stages)]))
    sections.append(Section("Settings", [key_values(findings.get("settings", {})), raw_block(findings, "findings.json")]))
    return sections


def study_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the study's page (``DIR/report.html`` by default) from its ``findings.json``."""
    from irm.core.io import atomic_write

    directory = Path(directory)
    findings = json.loads((directory / "findings.json").read_text(encoding="utf-8"))
    page = Path(out) if out else directory / "report.html"
    text = render_page(f"irm study: {findings['row']['host']}", study_sections(directory, findings))
    atomic_write(page, text.encode("utf-8"))
    return page
