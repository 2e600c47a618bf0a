"""The cross-host table of docs/findings.md (issue 17): one row per host, from the
``findings.json`` of several ``irm study`` folders.

    .venv/bin/python scripts/study_tables.py runs/study/*/findings.json            # print the table
    .venv/bin/python scripts/study_tables.py runs/study/*/findings.json --json     # the rows as JSON

Columns: striation per layer set against its noise level; the top index (the one ranked
first in most runs), its mean share of the IRM output's magnitude against an even spread,
and in how many runs and alignments it is first / in the top k; the host's
massive-activation dimensions (peak |activation| >= massive_ratio x the median dimension's);
the rank of each IRM's top index among the host's dimensions by that peak (1 = largest);
the share of the IRM's effect on its target emotion removed by zeroing its top k indices
against k random ones; the Spearman correlation of the host's |loss gradient| per index with
the IRM's profile, and the overlap of their top k against chance; training real tokens/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def num(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def span(stats: dict[str, Any] | None, fmt: str = ".3f", middle: str = "mean") -> str:
    """``middle [min, max]`` of a spread written by irm study; one value alone."""
    if not stats:
        return "-"
    if stats.get("n", 1) == 1:
        return num(stats[middle], fmt)
    return f"{num(stats[middle], fmt)} [{num(stats['min'], fmt)}, {num(stats['max'], fmt)}]"


def layer_sets(studies: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for study in studies:
        for layers in study["row"].get("striation", {}):
            if layers not in found:
                found.append(layers)
    return found


def row_cells(study: dict[str, Any], sets: list[str]) -> list[str]:
    row = study["row"]
    cells = [f"{row['host']}", f"{row['hidden_size']} x {row['num_layers']}", str(row["runs"])]
    for layers in sets:
        s = row.get("striation", {}).get(layers)
        cells.append(f"{span(s)} (noise {num(s['noise_level'])})" if s else "-")
    top = row.get("top_index")
    if top:
        cells.append(
            f"{top['index']}: {pct(top['mean_share'])} (even {pct(top['even_share'])}); first in {top['first_in_runs']}/{top['runs']}, "
            f"top-{top['k']} in {top['in_top_k_runs']}/{top['runs']} ({', '.join(top['alignments_in_top_k'])})"
        )
    else:
        cells.append("-")
    host = row.get("host_outliers", {})
    massive = ", ".join(f"{m['index']} ({m['ratio_to_median']:.0f}x)" for m in host.get("massive_dims", [])) or "none"
    cells.append(massive)
    cells.append(f"{span(host.get('irm_top1_rank_in_host'), '.0f', 'median')} of {row['hidden_size']}")
    ranks = host.get("massive_dim_rank_in_irm") or {}
    cells.append(", ".join(f"{index}: {span(stats, '.0f', 'median')}" for index, stats in ranks.items()) or "-")
    ablation = row.get("ablation", {})
    top_k, random_k = ablation.get("top_k_removed"), ablation.get("random_k_removed")
    cells.append(f"{pct(top_k and top_k['mean'])} / {pct(random_k and random_k['mean'])} (k={ablation.get('k')})")
    gradient = row.get("gradient", {})
    overlap = gradient.get("top_k_overlap")
    cells.append(
        f"{span(gradient.get('spearman_with_irm_profile'))}; top-k overlap {num(overlap and overlap['mean'], '.2f')} "
        f"(chance {num(gradient.get('expected_overlap_by_chance'), '.2f')})"
    )
    cells.append(span(row.get("tokens_per_second"), ".0f", "median"))
    return cells


def table(studies: list[dict[str, Any]]) -> list[str]:
    sets = layer_sets(studies)
    header = [
        "host",
        "hidden x layers",
        "runs",
        *(f"striation, layers {s}: mean [min, max]" for s in sets),
        "top index: mean share; runs first / in top k (alignments)",
        "host massive dims (x median)",
        "rank of each IRM's top index among host dims: median [min, max]",
        "rank of each massive dim in the IRMs: median [min, max]",
        "ablation: effect removed, top k / random k (mean)",
        "gradient vs IRM: Spearman mean [min, max]; top-k overlap",
        "training real tokens/s: median [min, max]",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row_cells(study, sets)) + " |" for study in studies]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("findings", nargs="+", type=Path, help="findings.json of each study (or the study folder)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of markdown")
    args = parser.parse_args()
    studies = []
    for path in args.findings:
        path = path / "findings.json" if path.is_dir() else path
        studies.append(json.loads(path.read_text(encoding="utf-8")))
    if args.json:
        print(json.dumps([s["row"] for s in studies], indent=2))
        return
    print("\n".join(table(studies)))


if __name__ == "__main__":
    main()
