"""The main job on the embedded host, end to end: train a short IRM on ``builtin:anger``,
evaluate it against the host on held-out prompts, show the answers side by side, record
and analyse its outputs, write the report.

The recipe (:class:`DemoSettings`) aims at three bars at strength x1 on the held-out prompts,
each with its 95% interval: p(anger) >= 0.4, content kept (median) >= 0.3 and distinct-2 >=
0.6. It trains on the rows of ``builtin:anger`` woven from the host's own answers, 240 steps
in the upper half of the layers. Measured (docs/findings.md, section 7.1) in ``make demo``:
p(anger) 0.48, content kept (median) 0.32, distinct-2 0.71; another seed: 0.47, 0.32, 0.68.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from irm.training.config import TrainConfig
from irm.training.rundir import RunDir

KEPT_ENOUGH = 0.3
"""A steered answer "kept the content" when it keeps at least this share of the host answer's content words."""


@dataclass
class DemoSettings:
    out: Path = Path("runs/demo")
    host: str = "smollm2-135m-instruct"
    data: str = "builtin:anger"
    emotion: str = "anger"
    layers: str = "15-29"
    max_steps: int = 240
    lr: float = 2e-3
    warmup_steps: int = 10
    batch_size: int = 8
    max_length: int = 128
    max_rows: int | None = 1409
    """The first N rows of the data. ``builtin:anger`` lists its 1,409 rows woven from the
    host's own answers first (data/README.md); the demo trains on those only."""
    seed: int = 1
    eval_prompts: int = 24
    """The first N of ``builtin:prompts`` (held out from every training set)."""
    max_new_tokens: int = 40
    strengths: tuple[float, ...] = (1.0, 2.0)
    analysis: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other :class:`TrainConfig` field."""

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            host=self.host,
            data=self.data,
            layers=self.layers,
            max_steps=self.max_steps,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            batch_size=self.batch_size,
            max_length=self.max_length,
            max_rows=self.max_rows,
            seed=self.seed,
            out=str(self.out),
            val_every=max(1, self.max_steps // 2),
            checkpoint_every=max(1, self.max_steps // 2),
            log_every=2,
            val_fraction=0.01,
            test_fraction=0.01,
            **self.extra,
        )


def estimate(value: Any) -> str:
    """``0.452 [0.341, 0.571]`` for an :class:`irm.evaluation.metrics.Estimate`."""
    mean, lo, hi = value
    return f"{mean:.3g} [{lo:.3g}, {hi:.3g}]"


@contextmanager
def stage_bar(console: Console, description: str) -> Iterator[Callable[[int, int], None]]:
    """One progress bar with the time left for a stage; yields ``update(done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"))
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def train_stage(settings: DemoSettings, console: Console) -> str:
    from irm.training.run import train

    result = train(settings.train_config(), overwrite=True, progress=True)
    losses = _train_losses(result.run_dir)
    s = result.summary
    line = f"loss {losses[0]:.2f} -> {losses[-1]:.2f} over {s.get('global_step', settings.max_steps)} steps" if losses else "no loss logged"
    if s.get("test_loss") is not None:
        line += f", held-out test loss {s['test_loss']:.2f}"
    return line


def _train_losses(run: Path) -> list[float]:
    import csv

    values: dict[int, float] = {}
    for path in RunDir(run).metrics_files():
        with open(path, encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("train_loss_step"):
                    values[int(row["step"])] = float(row["train_loss_step"])
    return [values[k] for k in sorted(values)]


def evaluate_stage(settings: DemoSettings, console: Console) -> tuple[str, Any]:
    """IRM off and at each strength on the held-out prompts, with intervals (RUN/eval)."""
    from irm.core.adapters import load_adapter
    from irm.data.rows import read_prompts
    from irm.evaluation.evaluate import HOST, evaluate, write_report
    from irm.hosts.loading import load_host

    run = settings.out
    host = load_host(settings.host)
    adapter = load_adapter(RunDir(run).irm, host)
    prompts = read_prompts("builtin:prompts", limit=settings.eval_prompts)
    with stage_bar(console, "evaluating") as update:
        report = evaluate(
            host,
            {"irm": adapter},
            prompts,
            target=settings.emotion,
            strengths=settings.strengths,
            max_new_tokens=settings.max_new_tokens,
            seed=0,
            progress=update,
        )
    write_report(report, RunDir(run).eval)
    off, on = report.get(HOST).metrics, report.get("irm", settings.strengths[0]).metrics
    x = f"x{settings.strengths[0]:g}"
    line = (
        f"p({settings.emotion}) host {estimate(off['target'])} -> IRM {x} {estimate(on['target'])}; "
        f"content kept {estimate(on['content_kept'])} (median {estimate(on['content_kept_median'])}); "
        f"distinct-2 {estimate(on['distinct_2'])}"
    )
    return line, report


def side_by_side(report: Any, run: Path, strength: float = 1.0) -> tuple[Path, dict[str, int]]:
    """The held-out answers with the IRM off and at ``strength`` (from the evaluation's own
    generations), each with its p(target), content kept and a verdict, the prompts where the
    tone changed and the content stayed first; written to RUN/generations.json."""
    target = report.target_emotion
    label = f"irm x{strength:g}"
    host = {(g["prompt"], g["sample"]): g for g in report.generations if g["condition"] == "host"}
    rows = []
    for g in (g for g in report.generations if g["condition"] == label):
        off = host[(g["prompt"], g["sample"])]
        kept = g.get("content_kept")
        angrier = g["top"] == target and off["top"] != target
        verdict = "tone changed" if angrier else "tone unchanged"
        if kept is None:
            verdict += ", no content to keep"  # the host's own answer had no content words
        else:
            verdict += ", content lost" if kept < KEPT_ENOUGH else ", content kept"
        rows.append(
            {
                "prompt": g["prompt"],
                "IRM off": off["text"],
                f"IRM x{strength:g}": g["text"],
                f"p({target}) off -> on": f"{off[f'p_{target}']:.2f} -> {g[f'p_{target}']:.2f}",
                "content kept": kept,
                "verdict": verdict,
            }
        )
    order = {"tone changed, content kept": 0, "tone changed, content lost": 1, "tone unchanged, content kept": 2}
    rows.sort(key=lambda r: order.get(r["verdict"], 3))
    path = RunDir(run).generations
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in dict.fromkeys(r["verdict"] for r in rows)}
    return path, counts


def analyse(run: Path, settings: DemoSettings) -> str:
    """Record the IRM on held-out prompts and analyse its outputs (RUN/analysis)."""
    from irm.analysis.pipeline import AnalyzeOptions, analyze

    options = AnalyzeOptions(k=10, token_plots=2, frames=0, prompt_limit=8, neutral_limit=8, max_new_tokens=24)
    summary = analyze([run], RunDir(run).analysis, options)
    striation, top = summary.get("striation", {}), summary.get("top_k", {})
    text = f"striation {striation.get('score', float('nan')):.2f} (noise level {striation.get('noise_level', float('nan')):.2f})"
    return text + f"; dominant indices {', '.join(map(str, top.get('indices', [])[:5]))}"


def run_demo(settings: DemoSettings, console: Console | None = None) -> Path:
    from irm.report.html import build_report

    console = console or Console(stderr=True, emoji=False)
    started = time.perf_counter()
    run = settings.out
    steps = 4 if settings.analysis else 3

    def headline(n: int, name: str, since: float, text: str) -> None:
        console.print(f"[bold cyan]irm demo[/] {n}/{steps} {name} ({time.perf_counter() - since:.0f} s): {text}")

    t = time.perf_counter()
    console.print(
        f"[bold cyan]irm demo[/] 1/{steps} training an IRM on {settings.data} ({settings.max_steps} steps of {settings.batch_size})"
    )
    headline(1, "trained", t, train_stage(settings, console))
    t = time.perf_counter()
    line, report = evaluate_stage(settings, console)
    headline(2, "evaluated on held-out prompts", t, line)
    _, counts = side_by_side(report, run, settings.strengths[0])
    console.print("[bold cyan]irm demo[/]     side by side: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if settings.analysis:
        t = time.perf_counter()
        with console.status("recording and analysing the IRM outputs"):
            text = analyse(run, settings)
        headline(3, "analysed", t, text)
    t = time.perf_counter()
    page = build_report(run)
    headline(steps, "report", t, str(page))
    console.print(f"[bold cyan]irm demo[/] finished in {(time.perf_counter() - started) / 60:.1f} min")
    return page
