"""One self-contained HTML page per run or per sweep.

Images are inlined as base64 data URIs and the page uses no script or stylesheet from
anywhere else, so it opens offline and can be mailed as one file. A run directory's page
shows what the run has produced so far; each section appears once its files exist:

``RUN/config.yaml``, ``RUN/summary.json``, ``RUN/logs/csv/metrics.csv``
    settings, outcome, training and validation curves;
``RUN/generations.json``
    generations side by side (IRM off / on / strengths);
``RUN/eval/``, ``RUN/analysis/``, ``RUN/ablation/``
    their key numbers as readable tables (the evaluation as "mean [lo, hi]" per metric and
    condition), the raw JSON folded away, and every PNG/GIF they wrote.

A sweep directory (``SWEEP/sweep.yaml`` + ``SWEEP/runs/*``) gets one row per run, linking to
each run's own page, and the cross-run analysis in ``SWEEP/analysis/``.

The page is rendered from the Jinja2 templates in ``irm/report/templates`` (autoescaped);
this module only turns the run's files into sections of blocks (tables of formatted
cells, images, notes, raw data) for them.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import yaml

from irm.errors import IRMError
from irm.training.rundir import RunDir

SECTIONS = (
    ("eval", "Evaluation: alignment and fluency"),
    ("analysis", "Inside the IRM: stripes and dominant indices"),
    ("ablation", "Ablation of dominant indices"),
)
EVAL_TITLES = {"alignment": "Alignment", "fluency": "Fluency", "drift": "Drift from the host"}
"""Table titles of the evaluation's metric groups (:data:`irm.evaluation.evaluate.METRIC_GROUPS`);
a metric in no group gets a table "Other metrics"."""
OUTCOME_KEYS = (
    "host",
    "data",
    "layers",
    "irm_parameters",
    "global_step",
    "epochs_completed",
    "train_loss",
    "val_loss",
    "val_ppl",
    "test_loss",
    "real_tokens_per_second",
    "wall_seconds",
    "world_size",
    "ranks_identical",
)
MAX_LIST = 12
"""Longer lists are cut to their first MAX_LIST items in a cell."""
RAW_LIMIT = 20_000
"""Characters of a JSON file shown under "raw data"."""


# ----------------------------------------------------------------------- formatting
def sig3(value: float) -> str:
    """A number with 3 significant digits (``0.452``, ``0.770``, ``12.3``, ``208``, ``1.23e+04``)."""
    if math.isnan(value):
        return "nan"
    if value == 0:
        return "0"
    text = f"{value:#.3g}"
    return text[:-1] if text.endswith(".") else text


def is_estimate(value: Any) -> bool:
    """Whether ``value`` is an estimate with its interval, as JSON: ``{"mean", "lo", "hi"}``."""
    return (
        isinstance(value, Mapping)
        and {"mean", "lo", "hi"} <= set(value)
        and all(isinstance(value[k], (int, float)) or value[k] is None for k in ("mean", "lo", "hi"))
    )


def estimate_text(value: Mapping[str, Any]) -> str:
    """``mean [lo, hi]`` with 3 significant digits each."""
    parts = ["-" if value[k] is None else sig3(float(value[k])) for k in ("mean", "lo", "hi")]
    return f"{parts[0]} [{parts[1]}, {parts[2]}]"


def cell_text(value: Any) -> str:
    """Plain text for a table cell: numbers with 4 significant digits, estimates as
    ``mean [lo, hi]``, lists comma-separated (cut after :data:`MAX_LIST`), mappings as
    ``key: value`` pairs; never JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if is_estimate(value):
        return estimate_text(value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {cell_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        items = [cell_text(v) for v in value[:MAX_LIST]]
        return ", ".join(items) + (f", ... ({len(value)})" if len(value) > MAX_LIST else "")
    return str(value)


@dataclass
class Cell:
    text: str
    num: bool = False
    href: str | None = None


def cell(value: Any) -> Cell:
    return Cell(cell_text(value), num=isinstance(value, (int, float)) and not isinstance(value, bool) or is_estimate(value))


@dataclass
class Block:
    """One thing in a section, drawn by ``templates/blocks.html.j2``: ``kind`` is ``table``
    (``columns`` + ``rows`` of cells), ``image`` (``src``), ``pre``/``note`` (``text``),
    ``raw`` (collapsed JSON) or ``heatmap`` (an interactive map: ``text`` is its base64
    float32 values, layer-major, ``name`` its layers as JSON, ``caption`` its title)."""

    kind: str
    caption: str = ""
    level: int = 3
    note: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    cls: str = ""
    empty: str = ""
    src: str = ""
    alt: str = ""
    name: str = ""
    text: str = ""


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    caption: str = "",
    cls: str = "",
    level: int = 3,
    empty: str = "",
) -> Block:
    """A table of records (one row each), its columns the records' keys in order."""
    columns = list(columns or dict.fromkeys(k for r in records for k in r))
    rows = [[c if isinstance(c, Cell) else cell(c) for c in (r.get(col) for col in columns)] for r in records]
    return Block("table", caption=caption, columns=columns, rows=rows, cls=cls, level=level, empty=empty)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys (estimates and lists kept whole)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not is_estimate(value):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def key_values(data: Mapping[str, Any], *, caption: str = "", level: int = 3, first: str = "setting") -> Block:
    return table([{first: k, "value": v} for k, v in flatten(data).items()], caption=caption, level=level)


def image_block(path: Path, alt: str = "") -> Block:
    mime = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".svg": "image/svg+xml"}[path.suffix.lower()]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return Block("image", src=f"data:{mime};base64,{data}", alt=alt or path.stem, name=path.name)


def raw_block(data: Any, name: str) -> Block:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if len(text) > RAW_LIMIT:
        text = text[:RAW_LIMIT] + f"\n... ({len(text) - RAW_LIMIT} more characters in {name})"
    return Block("raw", name=name, text=text)


def readable(data: Any, title: str = "") -> list[Block]:
    """Any JSON document as readable tables: its scalars (nested keys dotted) as
    setting/value rows, each list of records as its own table."""
    if isinstance(data, list) and data and all(isinstance(x, Mapping) for x in data):
        return [table(data, caption=title)]
    if not isinstance(data, Mapping):
        return [Block("note", text=f"{title}: {cell_text(data)}")]
    blocks: list[Block] = []
    scalars: dict[str, Any] = {}
    for key, value in flatten(data).items():
        if isinstance(value, list) and value and all(isinstance(x, Mapping) for x in value):
            blocks.append(table(value, caption=key, level=4))
        else:
            scalars[key] = value
    if scalars:
        blocks.insert(0, key_values(scalars, first="key", level=4))
    if title:
        blocks.insert(0, Block("note", text=title))
    return blocks


# ----------------------------------------------------------------------- the sections
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _images(directory: Path) -> list[Block]:
    return [image_block(p) for p in sorted(directory.glob("*.png")) + sorted(directory.glob("*.gif"))]


def eval_blocks(report: Mapping[str, Any]) -> list[Block]:
    """``eval/report.json`` (:meth:`irm.evaluation.evaluate.EvalReport.to_dict`): one table
    per metric group, a row per condition, each cell ``mean [lo, hi]``."""
    from irm.evaluation.evaluate import LEAD_METRICS, METRIC_GROUPS, METRICS

    conditions = [c for c in report.get("conditions", []) if isinstance(c, Mapping)]
    about = {k: report[k] for k in ("host", "target_emotion", "prompts", "samples") if k in report}
    blocks = [key_values(about, first="evaluated")] if about else []
    present = list(dict.fromkeys(m for c in conditions for m in c.get("metrics", {})))
    grouped = [(EVAL_TITLES.get(g, g), [m for m in metrics if m in present]) for g, metrics in METRIC_GROUPS.items()]
    known = {m for metrics in METRIC_GROUPS.values() for m in metrics} | set(LEAD_METRICS)
    grouped.append(("Other metrics", [m for m in present if m not in known]))
    lead = [m for m in LEAD_METRICS if m in present]
    for title, metrics in grouped:
        if not metrics:
            continue
        metrics = lead + metrics
        records = []
        for c in conditions:
            strength = c.get("strength")
            records.append(
                {
                    "condition": c.get("name", ""),
                    "strength": strength if c.get("adapter") != "host" else "",
                    **{METRICS.get(m, m): c.get("metrics", {}).get(m) for m in metrics},
                }
            )
        blocks.append(table(records, ["condition", "strength", *(METRICS.get(m, m) for m in metrics)], caption=title))
    if report.get("target_emotion"):
        blocks.append(
            Block(
                "note",
                text=f"each cell: mean [95% bootstrap interval]; p(target) is the scorer's probability of {report['target_emotion']}",
            )
        )
    if report.get("settings"):
        blocks.append(key_values(report["settings"], caption="Settings", level=4))
    return blocks


def _top_indices(top: Any) -> list[dict[str, Any]]:
    """``top_k`` (``{"indices", "shares"}``) or ``top_indices`` (a list of records) as rows."""
    if isinstance(top, Mapping) and isinstance(top.get("indices"), list):
        shares = top.get("shares") or [None] * len(top["indices"])
        return [{"rank": i + 1, "index": idx, "share": share} for i, (idx, share) in enumerate(zip(top["indices"], shares))]
    if isinstance(top, list):
        return [{"rank": i + 1, **t} if isinstance(t, Mapping) else {"rank": i + 1, "index": t} for i, t in enumerate(top)]
    return []


def analysis_blocks(summary: Mapping[str, Any], label: str = "") -> list[Block]:
    """An analysis ``summary.json``: striation, dominant indices, sparsity, coincidence with
    the host's outlier dimensions and, across runs, the consistency of the indices."""
    if isinstance(summary.get("runs"), list):  # several inputs: one part per run, then the comparison
        blocks = [
            b
            for run in summary["runs"]
            if isinstance(run, Mapping)
            for b in analysis_blocks(run, str(run.get("label", run.get("input", ""))))
        ]
        for host, report in (summary.get("consistency") or {}).items():
            blocks.extend(consistency_blocks(report, host))
        return blocks
    blocks: list[Block] = []
    key = {k: summary[k] for k in ("host", "hidden_size", "layers", "prompts", "tokens") if k in summary}
    striation = summary.get("striation")
    key.update({"striation": striation} if not isinstance(striation, Mapping) else {f"striation {k}": v for k, v in striation.items()})
    if isinstance(summary.get("striation_per_token"), Mapping):
        key["striation per token"] = summary["striation_per_token"]
    for name, value in (summary.get("sparsity") or {}).items():
        key[f"sparsity {name}"] = value
    top = summary.get("top_k", summary.get("top_indices"))
    if isinstance(top, Mapping) and "total_share" in top:
        key["top-k total share"] = top["total_share"]
    if key:
        blocks.append(key_values(key, caption=f"Key numbers{f': {label}' if label else ''}", first="measure"))
    rows = _top_indices(top)
    if rows:
        blocks.append(table(rows, caption="Dominant hidden indices", level=4))
    coincidence = summary.get("coincidence_with_host")
    if isinstance(coincidence, Mapping) and coincidence:
        blocks.append(
            table(
                [{"host signal": name, **(v if isinstance(v, Mapping) else {"value": v})} for name, v in coincidence.items()],
                caption="Coincidence with the host's outlier dimensions",
                level=4,
            )
        )
    if isinstance(summary.get("host_gradients"), Mapping):
        blocks.extend(readable(summary["host_gradients"], "the host's training-loss gradient at the IRM's sites"))
    return blocks


def consistency_blocks(report: Any, host: str = "") -> list[Block]:
    """The agreement of dominant indices across runs (``consistency.json``)."""
    if not isinstance(report, Mapping):
        return readable(report, host)
    blocks = []
    pairs = report.get("pairs")
    if isinstance(pairs, list):
        blocks.append(table(pairs, caption=f"Consistency of dominant indices{f' on {host}' if host else ''}", level=4))
    rest = {k: v for k, v in report.items() if k != "pairs"}
    if rest:
        blocks.extend(readable(rest))
    return blocks


def ablation_blocks(report: Mapping[str, Any]) -> list[Block]:
    """An ablation report (:func:`irm.evaluation.ablation.ablate`): each condition's metrics
    and the change that zeroing the dominant indices makes, against random indices."""
    if not isinstance(report.get("irm"), Mapping):
        return readable(report)
    key = {
        k: report[k]
        for k in ("indices", "prompts", "draws", "seed", "target", "irm_effect", "effect_removed_ablated", "effect_removed_random")
        if k in report
    }
    blocks = [key_values(key, caption="Ablation", first="measure")] if key else []
    metrics = list(report["irm"])
    conditions = [("host alone", report.get("host")), ("IRM", report.get("irm")), ("IRM, dominant indices zeroed", report.get("ablated"))]
    conditions += [(f"IRM, random indices {i + 1} zeroed", r) for i, r in enumerate(report.get("random") or [])]
    blocks.append(
        table(
            [{"condition": name, **{m: values.get(m) for m in metrics}} for name, values in conditions if isinstance(values, Mapping)],
            ["condition", *metrics],
            caption="Metrics",
            level=4,
        )
    )
    changes = [
        ("dominant indices zeroed", report.get("change_ablated")),
        ("random indices zeroed (mean)", report.get("change_random_mean")),
        ("random indices zeroed (std)", report.get("change_random_std")),
    ]
    blocks.append(
        table(
            [
                {"change from the IRM": name, **{m: values.get(m) for m in metrics}}
                for name, values in changes
                if isinstance(values, Mapping)
            ],
            ["change from the IRM", *metrics],
            caption="Effects",
            level=4,
        )
    )
    return blocks


def folder_section(directory: Path, title: str) -> Section | None:
    """``eval/``, ``analysis/`` or ``ablation/``: readable tables of each JSON file, its raw
    data folded away, then the pictures."""
    if not directory.is_dir():
        return None
    section = Section(title)
    for path in sorted(directory.glob("*.json"), key=lambda p: (p.stem not in ("summary", "report"), p.name)):  # the main file first
        data = _read_json(path)
        if data is None:
            section.blocks.append(Block("note", text=f"{path.name}: unreadable JSON"))
            continue
        if isinstance(data, Mapping) and isinstance(data.get("conditions"), list):
            section.blocks.extend(eval_blocks(data))
        elif isinstance(data, Mapping) and isinstance(data.get("irm"), Mapping) and "change_ablated" in data:
            section.blocks.extend(ablation_blocks(data))
        elif path.stem == "consistency" and isinstance(data, Mapping):
            for host, report in data.items():
                section.blocks.extend(consistency_blocks(report, host))
        elif isinstance(data, Mapping) and any(k in data for k in ("striation", "top_k", "top_indices", "runs")):
            section.blocks.extend(analysis_blocks(data))
        else:
            section.blocks.extend(readable(data, path.stem))
        section.blocks.append(raw_block(data, path.name))
    section.blocks.extend(heatmap_blocks(directory))
    section.blocks.extend(_images(directory))
    return section


def heatmap_blocks(directory: Path) -> list[Block]:
    """An interactive heatmap (hover, zoom) of each mean ``|IRM output|`` map that ``irm
    analyze`` saved in ``directory`` or its subfolders (``mean_abs_map.npy``, with the
    layers from the ``summary.json`` beside it); the PNGs stay for papers."""
    import numpy as np

    blocks = []
    for path in sorted(directory.glob("mean_abs_map.npy")) + sorted(directory.glob("*/mean_abs_map.npy")):
        try:
            values = np.load(path, allow_pickle=False).astype("<f4")
        except (OSError, ValueError):
            continue
        if values.ndim != 2 or values.size == 0:
            continue
        summary = _read_json(path.parent / "summary.json")
        layers = summary.get("layers") if isinstance(summary, Mapping) else None
        if not isinstance(layers, list) or len(layers) != values.shape[0]:
            layers = list(range(values.shape[0]))
        where = path.parent.relative_to(directory).as_posix()
        title = "mean |IRM output|" + ("" if where == "." else f" ({where})")
        blocks.append(Block("heatmap", caption=title, name=json.dumps(layers), text=base64.b64encode(values.tobytes()).decode("ascii")))
    return blocks


def training_curves(run: Path, workdir: Path) -> Block:
    files = RunDir(run).metrics_files()
    if not files:
        return Block("note", text="no training log")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {}
    for metrics in files:  # a resumed run continues in csv-resumed-N/; later values win
        with open(metrics, encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                for key in ("train_loss_step", "val_loss"):
                    if row.get(key):
                        series.setdefault(key, {})[int(row["step"])] = float(row[key])
    if not series:
        return Block("note", text="no losses logged yet")
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    for key, points in series.items():
        xs, ys = zip(*sorted(points.items()))
        ax.plot(xs, ys, marker="o" if key == "val_loss" else None, label=key.replace("_step", ""))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = workdir / "training_curves.png"
    fig.savefig(path)
    plt.close(fig)
    return image_block(path, "training and validation loss")


def generations_section(run: Path) -> Section | None:
    path = RunDir(run).generations
    if not path.is_file():
        return None
    rows = _read_json(path)
    if not isinstance(rows, list):
        return Section("Generations side by side", [Block("note", text=f"{path.name}: unreadable JSON")])
    return Section("Generations side by side", [table([r for r in rows if isinstance(r, Mapping)], cls="gen")])


# ----------------------------------------------------------------------- pages
@cache
def environment() -> jinja2.Environment:
    """The templates in ``irm/report/templates`` (package data), autoescaped."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("irm.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(title: str, sections: Iterable[Section | None]) -> str:
    shown = [s for s in sections if s is not None]
    interactive = any(b.kind == "heatmap" for s in shown for b in s.blocks)
    assets = {name: markupsafe.Markup(heatmap_asset(name)) for name in ("heatmap.js", "heatmap.css")} if interactive else {}
    return environment().get_template("page.html.j2").render(title=title, sections=shown, assets=assets) + "\n"


def heatmap_asset(name: str) -> str:
    """The interactive heatmap component (``heatmap.js`` / ``heatmap.css``, package data),
    shared with the ``irm serve`` playground."""
    from importlib import resources

    return resources.files("irm.report").joinpath("assets", name).read_text(encoding="utf-8")


def run_sections(run: Path) -> list[Section | None]:
    sections: list[Section | None] = []
    summary = RunDir(run).read_summary()
    if summary:
        sections.append(Section("Outcome", [key_values({k: summary[k] for k in OUTCOME_KEYS if k in summary})]))
    with tempfile.TemporaryDirectory() as tmp:
        sections.append(Section("Training and validation loss", [training_curves(run, Path(tmp))]))
    sections.append(generations_section(run))
    for folder, title in SECTIONS:
        sections.append(folder_section(run / folder, title))
    if RunDir(run).config.is_file():
        config = yaml.safe_load(RunDir(run).config.read_text(encoding="utf-8")) or {}
        sections.append(Section("Resolved configuration", [table([{"setting": k, "value": v} for k, v in config.items()])]))
    return sections


def run_report(run: Path, out: Path) -> Path:
    return _write(out, render_page(f"irm run: {run.name}", run_sections(run)))


def sweep_report(sweep: Path, out: Path) -> Path:
    columns = ["run", "data", "layers", "steps", "val_loss", "test_loss", "status"]
    rows: list[list[Cell]] = []
    for run in sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()):
        page = run_report(run, RunDir(run).report)
        summary = RunDir(run).read_summary()
        href = Path(os.path.relpath(page.absolute(), out.absolute().parent)).as_posix()
        values = [
            summary.get("data", ""),
            summary.get("layers", ""),
            summary.get("global_step", ""),
            summary.get("val_loss", ""),
            summary.get("test_loss", ""),
            "done" if summary else "unfinished",
        ]
        rows.append([Cell(run.name, href=href), *(cell(v) for v in values)])
    sections: list[Section | None] = [Section("Runs", [Block("table", columns=columns, rows=rows, empty="(no runs)")])]
    sections.append(folder_section(sweep / "analysis", "Across runs: consistency of dominant indices"))
    if (sweep / "sweep.yaml").is_file():
        sections.append(Section("Sweep file", [Block("pre", text=(sweep / "sweep.yaml").read_text(encoding="utf-8"))]))
    return _write(out, render_page(f"irm sweep: {sweep.name}", sections))


def _write(out: Path, text: str) -> Path:
    from irm.core.io import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text.encode("utf-8"))
    return out


def report_target(target: str | Path) -> tuple[Path, Path]:
    """``(target, its default page)`` after checking that ``target`` is a run or a sweep."""
    target = Path(target)
    if not target.is_dir():
        raise IRMError(f"{target} is not a directory", hint="pass a run directory (irm train --out) or a sweep directory")
    if (target / "findings.json").is_file() and (target / "study.json").is_file():  # an irm study
        return target, target / "report.html"
    if (target / "runs").is_dir():
        return target, target / "report.html"
    if not RunDir(target).is_run():
        raise IRMError(f"{target} is neither a run nor a sweep directory", hint="it needs config.yaml (a run) or runs/ (a sweep)")
    return target, RunDir(target).report


def build_report(target: str | Path, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write the page for a run or sweep directory; returns its path. The default page,
    ``TARGET/report.html``, is the report's own file and is rewritten every time; another
    ``out`` that exists is replaced only with ``overwrite`` (checked before any work)."""
    from irm.core.io import check_output_file

    target, default = report_target(target)
    page = Path(out) if out else default
    is_default = page.absolute().resolve() == default.absolute().resolve() if not page.is_symlink() else False
    check_output_file(page, overwrite=overwrite or is_default, option="--out")
    if (target / "study.json").is_file() and (target / "findings.json").is_file():
        from irm.report.study import study_report

        return study_report(target, page)
    if (target / "runs").is_dir():
        return sweep_report(target, page)
    return run_report(target, page)
