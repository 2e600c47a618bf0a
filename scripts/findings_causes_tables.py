"""Markdown tables for docs/findings.md section "What causes the stripes", from the outputs of
scripts/findings_causes.sh.

    PYTHONPATH=src .venv/bin/python scripts/findings_causes_tables.py          # print the tables
    PYTHONPATH=src .venv/bin/python scripts/findings_causes_tables.py --copy   # also copy small JSONs to docs/findings/causes/

Reads runs/causes/lr/*/summary.json (the SGD lr search), runs/causes/analysis_basis and
runs/causes/analysis_edits (irm analyze --logit-lens) and the runs' recordings (RUN/record),
which it resamples by prompt (a cluster bootstrap, 400 draws) for 95% intervals of the
striation score in both bases.
"""

from __future__ import annotations

import argparse
import json
import shutil
from itertools import combinations
from pathlib import Path
from statistics import mean

import numpy as np

from irm.analysis.bases import output_rotation_of, to_irm_basis
from irm.analysis.recording import load_recording
from irm.analysis.statistics import index_profile, jaccard, spearman, striation_scores, top_k
from irm.hosts.interventions import residual_permutation

ROOT = Path("runs/causes")
DOCS = Path("docs/findings/causes")
DRAWS = 400


def basis_dir() -> Path:
    """The analysis of the whole basis grid, or the early one of the Adam anger runs alone."""
    full = ROOT / "analysis_basis"
    return full if (full / "summary.json").is_file() else ROOT / "analysis_adam_anger"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def lr_search() -> list[str]:
    rows = []
    for run in [ROOT / "basis" / "adam-norot-anger-s1" / "summary.json", *sorted((ROOT / "lr").glob("*/summary.json"))]:
        if not run.is_file():
            continue
        s = json.loads(run.read_text())
        name = "adam lr 2e-3 (basis/adam-norot-anger-s1)" if run.parent.parent.name == "basis" else run.parent.name
        rows.append(f"| {name} | {s['global_step']} | {_num(s['train_loss'])} | {_num(s['test_loss'])} |")
    failed = [f"| {p.stem} | diverged | | {p.read_text().strip().splitlines()[-1][:80]} |" for p in sorted((ROOT / "lr").glob("*.failed"))]
    return ["| run | steps | last train loss | test loss |", "|---|---|---|---|", *rows, *failed]


def striation_interval(rec_dir: Path, irm_basis: bool, seed: int = 0) -> tuple[float, float, float]:
    """Striation of the mean |output| map and its 95% interval, resampling prompts."""
    rec = load_recording(rec_dir)
    outputs = np.asarray(rec.outputs, dtype=np.float32)
    if irm_basis:
        rotation = output_rotation_of(rec.meta["irm_config"])
        if rotation is not None:
            outputs = to_irm_basis(outputs, rotation)
    flat = np.abs(outputs).reshape(outputs.shape[0], -1).astype(np.float64)
    prompt_of = np.repeat(np.arange(len(rec.offsets) - 1), np.diff(rec.offsets))
    n = len(rec.offsets) - 1
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=DRAWS)
    weights = counts[:, prompt_of].astype(np.float64)
    maps = (weights @ flat) / weights.sum(1, keepdims=True)
    scores = striation_scores(maps.reshape(DRAWS, *outputs.shape[1:]))
    point = float(striation_scores(flat.mean(0).reshape(1, *outputs.shape[1:]))[0])
    lo, hi = np.percentile(scores, [2.5, 97.5])
    return point, float(lo), float(hi)


def _runs(analysis: Path) -> list[dict]:
    summary = load(analysis / "summary.json")
    return summary["runs"] if summary else []


def _mean(values: list[float]) -> str:
    return f"{mean(values):.3f}" if values else "n/a"


def _scaled(folder: Path, name: str) -> str:
    """Striation of a mean map with every layer scaled to mean 1 (the depth trend removed)."""
    m = np.load(folder / name)
    return f"{striation_scores((m / m.mean(1, keepdims=True))[None])[0]:.3f}"


def _depth_ratio(folder: Path) -> str:
    m = np.load(folder / "mean_abs_map.npy")
    return f"{m[-1].mean() / m[0].mean():.2f}"


def _fmt(interval: tuple[float, float, float]) -> str:
    return f"{interval[0]:.3f} [{interval[1]:.3f}, {interval[2]:.3f}]"


def basis_table() -> list[str]:
    if not _runs(basis_dir()):
        return []
    out = [
        "| run | test loss | striation, host basis [95% CI] | striation, IRM basis [95% CI] | layer share | top-5, host basis "
        "| top-5, IRM basis | top index share | Spearman with gradient | gradient top-10 in IRM top-10 "
        "| striation, each layer scaled to mean 1: host / IRM basis | mean abs(output), last / first layer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in _runs(basis_dir()):
        rec = Path(run["input"]) / "record"
        test = load(Path(run["input"]) / "summary.json") or {}
        host_s = striation_interval(rec, False)
        own_s = striation_interval(rec, True) if run["irm_basis"]["rotated"] else host_s
        own_top = run["irm_basis"]["top_k"]["indices"][:5] if run["irm_basis"]["rotated"] else run["top_k"]["indices"][:5]
        g = run.get("host_gradients", {})
        out.append(
            f"| {run['label']} | {_num(test.get('test_loss'))} | {_fmt(host_s)} | {_fmt(own_s)} | "
            f"{run['striation']['layer_share']:.3f} | {run['top_k']['indices'][:5]} | {own_top} | {run['top_k']['shares'][0]:.2%} | "
            f"{_num(g.get('spearman_with_irm_profile'))} | {g.get('coincidence_with_irm', {}).get('shared') or '-'} | "
            f"{_scaled(basis_dir() / run['label'], 'mean_abs_map.npy')} / "
            f"{_scaled(basis_dir() / run['label'], 'mean_abs_map_irm_basis.npy' if run['irm_basis']['rotated'] else 'mean_abs_map.npy')} | "
            f"{_depth_ratio(basis_dir() / run['label'])} |"
        )
    first = _runs(basis_dir())[0]
    noise, hidden = first["striation"]["noise_level"], first["hidden_size"]
    out.append(f"\nNoise level of the striation score: {noise:.3f}; an even spread gives each index 1/{hidden} = {1 / hidden:.2%}.")
    return out


def _pair_means(report: dict, same: str) -> dict[str, list[float]]:
    """Mean top-10 Jaccard and Spearman over pairs of runs of the same optimizer and rotation that
    share ``same`` (alignment: other seed; seed: other alignment)."""
    groups: dict[str, dict[str, list[float]]] = {}
    for pair in report["pairs"]:
        a, b = pair["a"].split("-"), pair["b"].split("-")  # opt, rot, alignment, seed
        if a[:2] != b[:2]:
            continue
        if (same == "alignment" and a[2] == b[2] and a[3] != b[3]) or (same == "seed" and a[3] == b[3] and a[2] != b[2]):
            g = groups.setdefault("-".join(a[:2]), {"jaccard": [], "spearman": []})
            g["jaccard"].append(pair["jaccard"])
            g["spearman"].append(pair["spearman_all"])
    return groups


def consistency_table() -> list[str]:
    host = load(basis_dir() / "consistency.json")
    own = load(basis_dir() / "consistency_irm_basis.json")
    if not host or not own:
        return []
    (host_report,), (own_report,) = host.values(), own.values()
    out = [
        "| optimizer-rotation | basis | other seed: top-10 Jaccard | other seed: Spearman | other alignment: Jaccard | other alignment: Spearman |",
        "|---|---|---|---|---|---|",
    ]
    for basis, report in (("host", host_report), ("IRM", own_report)):
        seed, align = _pair_means(report, "alignment"), _pair_means(report, "seed")
        for group in sorted(seed):
            if basis == "IRM" and group.endswith("norot"):
                continue
            s, a = seed[group], align.get(group, {"jaccard": [], "spearman": []})
            out.append(
                f"| {group} | {basis} | {_mean(s['jaccard'])} ({', '.join(f'{x:.2f}' for x in s['jaccard'])}) | "
                f"{_mean(s['spearman'])} ({', '.join(f'{x:.2f}' for x in s['spearman'])}) | "
                f"{_mean(a['jaccard'])} | {_mean(a['spearman'])} |"
            )
    twins = [
        p for p in host_report["pairs"] if p["a"].replace("-norot-", "-rot-") == p["b"] or p["b"].replace("-norot-", "-rot-") == p["a"]
    ]
    out.append("\nSame optimizer, alignment and seed, without vs with R (host basis):\n")
    out.append("| pair | top-10 Jaccard | Spearman (all indices) |")
    out.append("|---|---|---|")
    out += [f"| {p['a']} / {p['b']} | {p['jaccard']:.2f} | {p['spearman_all']:.3f} |" for p in twins]
    return out


def lens_tables(analysis: Path, labels: tuple[str, ...], indices: int = 5) -> list[str]:
    out = []
    for label in labels:
        lens = load(analysis / label / "logit_lens.json")
        if lens is None:
            continue
        out.append(f"\n**{label}**: top {indices} indices (sign of the mean output) through the final norm and LM head\n")
        out.append("| index | promotes | suppresses |")
        out.append("|---|---|---|")
        for row in lens["top_indices"][:indices]:
            words = ", ".join(repr(t["token"]) for t in row["promoted"][:8])
            anti = ", ".join(repr(t["token"]) for t in row["suppressed"][:8])
            out.append(f"| {'+' if row['sign'] > 0 else '-'}{row['index']} | {words} | {anti} |")
        for row in (lens["layer_means"][0], lens["layer_means"][len(lens["layer_means"]) // 2], lens["layer_means"][-1]):
            out.append(
                f"| mean of layer {row['layer']} | {', '.join(repr(t['token']) for t in row['promoted'][:8])} | "
                f"{', '.join(repr(t['token']) for t in row['suppressed'][:8])} |"
            )
        effect = lens.get("direct_effect")
        if effect:
            shares = ", ".join(
                f"last {r['last_k']}: {r['share_of_full_change']:.2f} (cos {r['mean_cosine_with_full']:.2f})" for r in effect["depths"]
            )
            out.append(
                f"\nDirect effect ({effect['prompts']} prompts, last prompt token): share of the full logit change from {shares}. "
                f"All layers promote {', '.join(repr(t['token']) for t in effect['full_promoted'][:8])}."
            )
    return out


def _profile(analysis: Path, label: str) -> np.ndarray:
    return index_profile(np.load(analysis / label / "mean_abs_map.npy"))


def edits_table() -> list[str]:
    analysis = ROOT / "analysis_edits"
    runs = {r["label"]: r for r in _runs(analysis)}
    if not runs:
        return []
    out = [
        "| edited run | unedited twin | test loss (edited / twin) | same IRM checksum | top-5 (edited, own labels) "
        "| top-10 Jaccard raw / mapped back | Spearman raw / mapped back |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in sorted(runs):
        if label.startswith("adam-"):
            continue
        seed = label.rsplit("-s", 1)[1]
        twin = f"adam-norot-anger-s{seed}"
        if twin not in runs:
            continue
        edited, base = _profile(analysis, label), _profile(analysis, twin)
        mapped = edited
        if label.startswith("permute-"):
            perm = residual_permutation(int(label.split("-")[1]), edited.size)
            mapped = np.empty_like(edited)
            mapped[perm] = edited  # index j of the edited host is index perm[j] of the original
        s_edit = load(Path(runs[label]["input"]) / "summary.json") or {}
        s_twin = load(Path(runs[twin]["input"]) / "summary.json") or {}
        top = lambda p: top_k(p, 10).indices  # noqa: E731
        out.append(
            f"| {label} | {twin} | {_num(s_edit.get('test_loss'), '.4f')} / {_num(s_twin.get('test_loss'), '.4f')} | "
            f"{s_edit.get('irm_checksum') == s_twin.get('irm_checksum')} | {top(edited)[:5]} | "
            f"{jaccard(top(edited), top(base)):.2f} / {jaccard(top(mapped), top(base)):.2f} | "
            f"{spearman(edited, base):.3f} / {spearman(mapped, base):.3f} |"
        )
    seeds = [label for label in runs if label.startswith("adam-norot-anger-s")]
    for a, b in combinations(sorted(seeds), 2):
        pa, pb = _profile(analysis, a), _profile(analysis, b)
        out.append(
            f"\nFor scale, two seeds of the unedited host ({a} / {b}): top-10 Jaccard "
            f"{jaccard(top_k(pa, 10).indices, top_k(pb, 10).indices):.2f}, Spearman {spearman(pa, pb):.3f}."
        )
    return out


def copy() -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    for analysis in ("analysis_basis", "analysis_adam_anger", "analysis_edits"):
        for name in ("summary.json", "consistency.json", "consistency_irm_basis.json"):
            src = ROOT / analysis / name
            if src.is_file():
                shutil.copyfile(src, DOCS / f"{analysis}_{name}")
        for lens in (ROOT / analysis).glob("*/logit_lens.json"):
            if analysis != "analysis_edits" and lens.parent.name.endswith("-s1"):
                data = json.loads(lens.read_text())
                means = data["layer_means"]
                data["layer_means"] = [means[0], means[len(means) // 2], *means[-2:]]  # the rest: RUN's analysis folder
                (DOCS / f"logit_lens_{lens.parent.name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        for heatmap in (ROOT / analysis).glob("*-rot-anger-s1/heatmap_mean*.png"):
            shutil.copyfile(heatmap, DOCS / f"{heatmap.parent.name}_{heatmap.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/causes"), help="the OUT of scripts/findings_causes.sh [runs/causes]")
    parser.add_argument("--copy", action="store_true", help="copy the small JSON files and a few heatmaps to docs/findings/causes/")
    args = parser.parse_args()
    global ROOT, DOCS
    ROOT = args.root
    if ROOT != Path("runs/causes"):
        DOCS = DOCS.with_name(f"causes_{ROOT.name.removeprefix('causes_')}")
    sections = {
        "SGD learning-rate search (anger, seed 1, 30 steps)": lr_search(),
        "Basis tests": basis_table(),
        "Consistency of the top indices": consistency_table(),
        "Logit lens": lens_tables(basis_dir(), ("adam-norot-anger-s1", "adam-norot-joy-s1", "sgd-norot-anger-s1")),
        "LM-head interventions": edits_table(),
    }
    for title, lines in sections.items():
        if lines:
            print(f"### {title}\n")
            print("\n".join(lines) + "\n")
    if args.copy:
        copy()


if __name__ == "__main__":
    main()
