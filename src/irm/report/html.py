"""One self-contained HTML page per run or per sweep.

Images are inlined as base64 data URIs and the page uses no script or stylesheet from
anywhere else, so it opens offline and can be mailed as one file. A run directory's page
shows what the run has produced so far; each section appears once its files exist:

``RUN/config.yaml``, ``RUN/summary.json``, ``RUN/logs/csv/metrics.csv``
    settings, outcome, training and validation curves;
``RUN/generations.json``
    generations side by side (IRM off / on / strengths);
``RUN/eval/``, ``RUN/analysis/``, ``RUN/ablation/``
    their JSON summaries as tables and every PNG/GIF they wrote.

A sweep directory (``SWEEP/sweep.yaml`` + ``SWEEP/runs/*``) gets one row per run, linking to
each run's own page, and the cross-run analysis in ``SWEEP/analysis/``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import yaml

from irm.errors import IRMError
from irm.training.rundir import RunDir

SECTIONS = (("eval", "Evaluation: alignment and fluency"), ("analysis", "Inside the IRM: stripes and dominant indices"),
            ("ablation", "Ablation of dominant indices"))
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top;text-align:left}
th{background:#f4f4f6}img{max-width:100%;border:1px solid #eee;margin:.4rem 0}code{background:#f4f4f6;padding:0 .2rem}
.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}.gen td{max-width:320px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 12:
        return _esc(", ".join(map(str, value[:12])) + f", ... ({len(value)})")
    if isinstance(value, (dict, list, tuple)):
        return _esc(json.dumps(value)[:300])
    return _esc(value)


def image_tag(path: Path, alt: str = "") -> str:
    mime = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".svg": "image/svg+xml"}[path.suffix.lower()]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{_esc(alt or path.stem)}" src="data:{mime};base64,{data}"><figcaption class="muted">{_esc(path.name)}</figcaption></figure>'


def table(rows: list[dict[str, Any]], columns: list[str] | None = None, cls: str = "") -> str:
    if not rows:
        return '<p class="muted">(none)</p>'
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if isinstance(r.get(c), (int, float)) else ""}">{_fmt(r.get(c, ""))}</td>' for c in columns) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def key_values(data: dict[str, Any]) -> str:
    return table([{"setting": k, "value": v} for k, v in data.items()])


def json_block(data: Any, title: str = "") -> str:
    """Render a JSON document: scalars as key/value, lists of records as tables."""
    parts = [f"<h3>{_esc(title)}</h3>"] if title else []
    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        return "".join(parts) + table(data)
    if not isinstance(data, dict):
        return "".join(parts) + f"<pre>{_esc(json.dumps(data, indent=2)[:4000])}</pre>"
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(isinstance(x, dict) for x in v))}
    if scalars:
        parts.append(key_values(scalars))
    for key, value in data.items():
        if key in scalars:
            continue
        if isinstance(value, list):
            parts.append(f"<h4>{_esc(key)}</h4>" + table([x for x in value if isinstance(x, dict)]))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            parts.append(f"<h4>{_esc(key)}</h4>" + table([{"": k, **v} for k, v in value.items()]))
        elif isinstance(value, dict):
            parts.append(f"<h4>{_esc(key)}</h4>" + key_values(value))
    return "".join(parts)


def _training_curves(run: Path, workdir: Path) -> str:

    files = RunDir(run).metrics_files()
    if not files:
        return '<p class="muted">no training log</p>'
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
        return '<p class="muted">no losses logged yet</p>'
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
    return image_tag(path, "training and validation loss")


def _generations(run: Path) -> str:
    path = RunDir(run).generations
    if not path.is_file():
        return ""
    rows = json.loads(path.read_text(encoding="utf-8"))
    return "<h2>Generations side by side</h2>" + table(rows, cls="gen")


def _section(run: Path, folder: str, title: str) -> str:
    directory = run / folder
    if not directory.is_dir():
        return ""
    parts = [f"<h2>{_esc(title)}</h2>"]
    for path in sorted(directory.glob("*.json")):
        try:
            parts.append(json_block(json.loads(path.read_text(encoding="utf-8")), path.stem))
        except json.JSONDecodeError:
            parts.append(f'<p class="muted">{_esc(path.name)}: unreadable JSON</p>')
    for path in sorted(directory.glob("*.png")) + sorted(directory.glob("*.gif")):
        parts.append(image_tag(path))
    return "".join(parts)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>{body}</body></html>\n")


def run_report(run: Path, out: Path) -> Path:
    import tempfile

    parts = []
    summary = RunDir(run).read_summary()
    if summary:
        keep = ("host", "data", "layers", "irm_parameters", "global_step", "epochs_completed", "train_loss", "val_loss",
                "val_ppl", "test_loss", "real_tokens_per_second", "wall_seconds", "world_size", "ranks_identical")
        parts.append("<h2>Outcome</h2>" + key_values({k: summary[k] for k in keep if k in summary}))
    with tempfile.TemporaryDirectory() as tmp:
        parts.append("<h2>Training and validation loss</h2>" + _training_curves(run, Path(tmp)))
    parts.append(_generations(run))
    for folder, title in SECTIONS:
        parts.append(_section(run, folder, title))
    if RunDir(run).config.is_file():
        config = yaml.safe_load(RunDir(run).config.read_text(encoding="utf-8"))
        parts.append("<h2>Resolved configuration</h2>" + key_values(config))
    return _write(out, _page(f"irm run: {run.name}", "".join(parts)))


def sweep_report(sweep: Path, out: Path) -> Path:
    rows = []
    for run in sorted(p for p in (sweep / "runs").iterdir() if p.is_dir()):
        page = run_report(run, RunDir(run).report)
        summary = RunDir(run).read_summary()
        link = f'<a href="{_esc(page.relative_to(out.parent) if page.is_relative_to(out.parent) else page)}">{_esc(run.name)}</a>'
        rows.append({"run": link, "data": summary.get("data", ""), "layers": summary.get("layers", ""),
                     "steps": summary.get("global_step", ""), "val_loss": summary.get("val_loss", ""),
                     "test_loss": summary.get("test_loss", ""), "status": "done" if summary else "unfinished"})
    body = "<h2>Runs</h2>" + _raw_table(rows)
    body += _section(sweep, "analysis", "Across runs: consistency of dominant indices")
    if (sweep / "sweep.yaml").is_file():
        body += "<h2>Sweep file</h2><pre>" + _esc((sweep / "sweep.yaml").read_text(encoding="utf-8")) + "</pre>"
    return _write(out, _page(f"irm sweep: {sweep.name}", body))


def _raw_table(rows: list[dict[str, Any]]) -> str:
    """Like :func:`table`, but the ``run`` column holds trusted HTML (a link we built)."""
    if not rows:
        return '<p class="muted">(no runs)</p>'
    columns = list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{r[c] if c == 'run' else _fmt(r[c])}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _write(out: Path, text: str) -> Path:
    from irm.core.io import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text.encode("utf-8"))
    return out


def build_report(target: str | Path, out: str | Path | None = None) -> Path:
    """Write the page for a run or sweep directory; returns its path."""
    target = Path(target)
    if not target.is_dir():
        raise IRMError(f"{target} is not a directory", hint="pass a run directory (irm train --out) or a sweep directory")
    if (target / "runs").is_dir():
        return sweep_report(target, Path(out) if out else target / "report.html")
    if not RunDir(target).is_run():
        raise IRMError(f"{target} is neither a run nor a sweep directory", hint="it needs config.yaml (a run) or runs/ (a sweep)")
    return run_report(target, Path(out) if out else RunDir(target).report)
