"""The zoo table of docs/findings.md ("What causes the stripes"): one row per design choice.

    .venv/bin/python scripts/findings_zoo.py docs/findings/zoo                 # from the zoo's own results
    .venv/bin/python scripts/findings_zoo.py docs/findings/zoo runs/study      # + each zoo host's irm study
    .venv/bin/python scripts/findings_zoo.py docs/findings/zoo docs/findings/zoo/study   # the same, from the copies

Columns from the zoo build (docs/findings/zoo/HOST/zoo_model.json): what the model changes,
its validation perplexity with a 95% bootstrap interval over validation windows, and the
host's largest residual-stream dims by peak |activation| on 16 neutral prompts (the
`irm analyze --host-outliers` measure) with their ratio to the median dim. Columns from
`irm study HOST` (STUDY/HOST/findings.json or its copy STUDY/HOST.json, when present):
striation per layer set against its noise level; the top index with its mean share of the
IRM output (against an even spread), how often it comes first and its median rank among the
host's dims by peak |activation|; and recurrence: the indices in the most runs' top k, with
in how many runs and alignments.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ORDER = ("base", "learned", "nope", "layernorm", "postnorm", "untied")
MASSIVE_RATIO = 100.0
"""What `irm study` calls a massive activation: peak >= 100 x the median dim's."""


def models(folder: Path) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in folder.glob("*/zoo_model.json")]
    return sorted(found, key=lambda r: ORDER.index(r["variant"]) if r["variant"] in ORDER else len(ORDER))


def read_study(root: Path | None, host: str) -> dict[str, Any] | None:
    """A zoo host's findings.json: ROOT/HOST/findings.json (a study folder) or ROOT/HOST.json (a copy)."""
    if root is None:
        return None
    for path in (root / host / "findings.json", root / f"{host}.json"):
        if path.is_file():
            return dict(json.loads(path.read_text()))
    return None


def study_cells(study: dict[str, Any] | None) -> list[str]:
    if study is None:
        return ["(irm study pending)"] * 3
    row = study["row"]
    striation = (
        "; ".join(f"{layers}: {s['mean']:.3f} (noise {s['noise_level']:.3f})" for layers, s in row.get("striation", {}).items()) or "-"
    )
    top = row.get("top_index")
    rank = (row.get("host_outliers") or {}).get("irm_top1_rank_in_host") or {}
    top_cell = (
        f"{top['index']}: {top['mean_share']:.1%} (even {top['even_share']:.1%}); first in {top['first_in_runs']}/{top['runs']}; "
        f"median rank of each run's top index among host dims {rank.get('median', float('nan')):.0f}/{row['hidden_size']}"
        if top
        else "-"
    )
    k = row["consistency"]["k"]
    recurrence = "; ".join(f"{r['index']}: {r['runs']}/{row['runs']} ({len(r['alignments'])} al.)" for r in study.get("recurrence", [])[:3])
    jaccard = row["consistency"]["top_k_jaccard"]
    agree = f"top-{k} Jaccard other seed {jaccard['same_alignment_other_seed']['mean']:.2f}, other alignment {jaccard['other_alignment_same_seed']['mean']:.2f} (chance {row['consistency']['chance_jaccard']:.2f})"
    return [striation, top_cell, f"{recurrence}; {agree}"]


def table(zoo: Path, study_root: Path | None) -> list[str]:
    header = [
        "design choice (vs base)",
        "host",
        "params",
        "val perplexity (95% CI)",
        "top residual dims: peak / median",
        "striation (noise level)",
        "top index: share; runs first",
        "recurrence: index: runs in top k (alignments); agreement",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in models(zoo):
        low, high = m["val"]["perplexity_ci95"]
        massive = m["massive_activations"]["residual_max_abs"]
        dims = ", ".join(
            f"{'**' if r >= MASSIVE_RATIO else ''}{d} ({r:.1f}x){'**' if r >= MASSIVE_RATIO else ''}"
            for d, r in zip(massive["top_k"][:3], massive["ratio_to_median"][:3])
        )
        study = read_study(study_root, m["name"])
        cells = [
            m["change"],
            f"`{m['name']}`",
            f"{m['parameters'] / 1e6:.2f} M",
            f"{m['val']['perplexity']:.1f} ({low:.1f}-{high:.1f})",
            dims,
            *study_cells(study),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_curves(zoo: Path, out: Path) -> None:
    """Training loss (smoothed over 10 steps) and validation loss of every model, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for m in models(zoo):
        steps, loss = np.array([r[0] for r in m["curve"]]) + 1, np.array([r[1] for r in m["curve"]])
        window = min(10, len(loss))
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        line = ax.plot(steps[window - 1 :], smooth, lw=1, label=f"{m['name']} ({m['change']})")[0]
        val = np.array(m["val_curve"])
        ax.plot(val[:, 0], val[:, 1], "o", color=line.get_color(), ms=3)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="zoo pre-training: train (lines, 10-step mean) and validation (dots)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zoo", type=Path, help="docs/findings/zoo (one HOST/zoo_model.json per model)")
    parser.add_argument("study", type=Path, nargs="?", help="folder of irm study outputs, one HOST/findings.json per zoo host")
    parser.add_argument("--plot", type=Path, help="also draw the training curves to this PNG")
    args = parser.parse_args()
    if args.plot:
        plot_curves(args.zoo, args.plot)
    print("\n".join(table(args.zoo, args.study)))


if __name__ == "__main__":
    main()
