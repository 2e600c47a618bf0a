"""Markdown tables for docs/findings.md from the outputs of scripts/findings_smollm2.sh.

    .venv/bin/python scripts/findings_tables.py            # print the tables
    .venv/bin/python scripts/findings_tables.py --copy     # also copy the small JSONs to docs/findings/

Reads runs/compare/*/report.json (irm evaluate), runs/sweep_smollm2/analysis/summary.json
(irm analyze), runs/sweep_smollm2/gradients/summary.json (irm analyze --gradients train) and
runs/ablate/*.json (irm ablate).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from statistics import mean

EMOTIONS = ("anger", "sadness", "joy")
DOCS = Path("docs/findings")


def load(path: str | Path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def ci(m: dict, fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(m['mean'])} [{fmt.format(m['lo'])}, {fmt.format(m['hi'])}]"


def comparison() -> list[str]:
    out = []
    for emotion in EMOTIONS:
        report = load(Path("runs/compare") / emotion / "report.json")
        if report is None:
            continue
        out += [
            f"**{emotion}** ({report['prompts']} held-out prompts x {report['samples']} sample, "
            f"{report['settings']['max_new_tokens']} new tokens, T={report['settings']['temperature']})",
            "",
            f"| condition | p({emotion}) | top emotion = {emotion} | valence | perplexity (host) | distinct-2 | repetition | KL drift (nats) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in report["conditions"]:
            m = c["metrics"]
            out.append(
                f"| {c['name']} | {ci(m['target'])} | {ci(m['target_top'], '{:.2f}')} | {ci(m['valence'], '{:.2f}')} | "
                f"{ci(m['perplexity'], '{:.2f}')} | {ci(m['distinct_2'], '{:.2f}')} | {ci(m['repetition'], '{:.3f}')} | "
                f"{ci(m['drift'], '{:.3f}')} |"
            )
        out.append("")
    return out


def sweep() -> list[str]:
    summary = load("runs/sweep_smollm2/analysis/summary.json")
    if summary is None:
        return []
    out = [
        "| run | tokens | striation (index share; noise level) | layer share | top-5 indices (share of total) | top-10 share | "
        "Hoyer sparsity | top-10 shared with host: residual max / norm gain / LM-head norm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        top = run["top_k"]
        shown = ", ".join(f"{i} ({s:.2%})" for i, s in zip(top["indices"][:5], top["shares"][:5]))
        co = run.get("coincidence_with_host", {})
        shared = " / ".join(str(co[k]["shared"] or "-") for k in ("residual_max_abs", "final_norm_gain", "lm_head_column_norm") if k in co)
        out.append(
            f"| {run['label']} | {run['tokens']} | {run['striation']['score']:.3f} ({run['striation']['noise_level']:.3f}) | {run['striation']['layer_share']:.3f} | "
            f"{shown} | {top['total_share']:.2%} | {run['sparsity']['hoyer']['mean']:.3f} | {shared} |"
        )
    out += [
        "",
        "Noise level: the striation score of i.i.d. cells, (H-1)/(L*H-1); an even spread gives each index 1/576 = 0.17% of the total.",
        "",
    ]
    for host, report in summary["consistency"].items():
        first = report["most_often_first"]
        out.append(
            f"{host}: index {first['index']} ranked first in {first['runs']} of {first['of']} runs; "
            f"mean top-{report['k']} Jaccard over all pairs {report['mean_jaccard']:.3f}."
        )
        groups: dict[str, list[float]] = {
            "same alignment, other seed, same layers": [],
            "other alignment, same seed and layers": [],
            "same alignment and seed, other layers": [],
            "everything else": [],
        }
        spear: dict[str, list[float]] = {k: [] for k in groups}
        for p in report["pairs"]:
            a, b = (dict(part.split("-", 1) for part in name.split("_")) for name in (p["a"], p["b"]))
            same = {k for k in a if a[k] == b[k]}
            key = (
                "same alignment, other seed, same layers"
                if same == {"data", "layers"}
                else "other alignment, same seed and layers"
                if same == {"seed", "layers"}
                else "same alignment and seed, other layers"
                if same == {"data", "seed"}
                else "everything else"
            )
            groups[key].append(p["jaccard"])
            spear[key].append(p["spearman_all"])
        out += ["", "| pairs of runs | pairs | mean top-10 Jaccard | mean Spearman (all 576 indices) |", "|---|---|---|---|"]
        for key, values in groups.items():
            if values:
                out.append(f"| {key} | {len(values)} | {mean(values):.3f} | {mean(spear[key]):.3f} |")
        counts = ", ".join(f"{c['index']} ({c['runs']})" for c in report["top_k_counts"])
        out += ["", f"Indices in most runs' top {report['k']} (runs): {counts}.", ""]
    return out


def gradients() -> list[str]:
    summary = load("runs/sweep_smollm2/gradients/summary.json")
    if summary is None:
        return []
    out = [
        "| run | gradient: mean cosine between layers | adjacent layers | first vs last | striation of abs(gradient) | "
        "gradient top-5 | Spearman(abs gradient, IRM profile) | IRM top-10 in gradient top-10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        g = run["host_gradients"]
        out.append(
            f"| {run['label']} | {g['mean_cosine_between_layers']:.3f} | {g['mean_cosine_adjacent_layers']:.3f} | "
            f"{g['cosine_first_last']:.3f} | {g['striation']:.3f} | {g['top_indices'][:5]} | "
            f"{g['spearman_with_irm_profile']:.3f} | {g['coincidence_with_irm']['shared'] or '-'} |"
        )
    return out + [""]


def ablation() -> list[str]:
    out = [
        "| alignment | zeroed | prompts | p(target): host / IRM / top-k zeroed / random k zeroed (mean of draws) | "
        "share of the IRM's effect removed: top k / random draws | distinct-2: IRM / top-k zeroed |",
        "|---|---|---|---|---|---|",
    ]
    found = False
    for suffix in ("", "_k10"):
        for emotion in EMOTIONS:
            r = load(Path("runs/ablate") / f"{emotion}{suffix}.json")
            if r is None:
                continue
            found = True
            key = f"p_{r['target']}"
            rand = mean(d[key] for d in r["random"])
            removed_random = ", ".join(f"{x:.0%}" for x in r["effect_removed_random"])
            shown = r["indices"] if len(r["indices"]) <= 3 else f"top {len(r['indices'])}"
            out.append(
                f"| {emotion} | {shown} | {r['prompts']} | {r['host'][key]:.3f} / {r['irm'][key]:.3f} / {r['ablated'][key]:.3f} / "
                f"{rand:.3f} | {r['effect_removed_ablated']:.1%} / {removed_random} | "
                f"{r['irm']['distinct_2']:.2f} / {r['ablated']['distinct_2']:.2f} |"
            )
    return out + [""] if found else []


def copy() -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    for emotion in EMOTIONS:
        for src, dst in (
            (Path("runs/compare") / emotion / "report.json", DOCS / f"compare_{emotion}.json"),
            (Path("runs/compare") / emotion / "curve.png", DOCS / f"curve_{emotion}.png"),
            (Path("runs/ablate") / f"{emotion}.json", DOCS / f"ablate_{emotion}.json"),
            (Path("runs/ablate") / f"{emotion}_k10.json", DOCS / f"ablate_{emotion}_k10.json"),
        ):
            if src.is_file():
                shutil.copyfile(src, dst)
    for src, dst in (
        (Path("runs/sweep_smollm2/analysis/summary.json"), DOCS / "sweep_analysis.json"),
        (Path("runs/sweep_smollm2/gradients/summary.json"), DOCS / "sweep_gradients.json"),
        (Path("runs/long_anger_analysis/summary.json"), DOCS / "long_anger_analysis.json"),
        (Path("runs/long_anger_analysis/long_anger/heatmap_mean.png"), DOCS / "heatmap_long_anger.png"),
        (Path("runs/ablate/long_anger.json"), DOCS / "ablate_long_anger.json"),
    ):
        if src.is_file():
            shutil.copyfile(src, dst)
    for run in sorted(Path("runs/sweep_smollm2/analysis").glob("*_seed-1_layers-all")):
        heatmap = run / "heatmap_mean.png"
        if heatmap.is_file():
            shutil.copyfile(heatmap, DOCS / f"heatmap_{run.name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy", action="store_true", help="copy the small JSON files and a few images to docs/findings/")
    args = parser.parse_args()
    for title, lines in (("Comparison", comparison()), ("Sweep", sweep()), ("Gradients", gradients()), ("Ablation", ablation())):
        if lines:
            print(f"## {title}\n")
            print("\n".join(lines))
    if args.copy:
        copy()


if __name__ == "__main__":
    main()
