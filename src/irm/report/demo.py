"""The main job on the embedded host, end to end: train a short IRM on ``builtin:anger``,
compare generations, evaluate, record and analyse its outputs, write the report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from irm.training.config import TrainConfig
from irm.training.rundir import RunDir

DEMO_PROMPTS = [
    "How do plants get water from the soil?",
    "What should I consider when choosing a bicycle?",
    "Can you explain how a refrigerator keeps food cold?",
    "What is a good way to start learning to cook?",
    "Why do leaves change colour in autumn?",
    "How does a library organise its books?",
]


@dataclass
class DemoSettings:
    out: Path = Path("runs/demo")
    host: str = "smollm2-135m-instruct"
    data: str = "builtin:anger"
    layers: str = "all"
    max_steps: int = 40
    """SmolLM2 trains at roughly 10 s per step of 8 rows on a 2-core CPU."""
    lr: float = 1e-3
    batch_size: int = 8
    eval_prompts: int = 24
    max_new_tokens: int = 40
    quick: bool = False

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            host=self.host,
            data=self.data,
            layers=self.layers,
            max_steps=self.max_steps,
            lr=self.lr,
            batch_size=self.batch_size,
            out=str(self.out),
            val_every=max(1, self.max_steps // 2),
            checkpoint_every=max(1, self.max_steps // 2),
            log_every=2,
            max_length=96,
            val_fraction=0.02,
            test_fraction=0.02,
        )


def _step(console: Console, name: str, fn: Callable[[], object]) -> object:
    start = time.perf_counter()
    console.print(f"[bold cyan]irm demo[/] {name} ...")
    result = fn()
    console.print(f"[bold cyan]irm demo[/] {name} done in {time.perf_counter() - start:.0f} s")
    return result


def side_by_side(
    run: Path, host_name: str, prompts: list[str], strengths: tuple[float, ...] = (1.0, 2.0), max_new_tokens: int = 40
) -> Path:
    """Greedy generations with the IRM off and at each strength, written to RUN/generations.json."""
    from irm.core.attach import attach
    from irm.core.network import IRM
    from irm.hosts.generation import generate
    from irm.hosts.loading import load_host

    host = load_host(host_name)
    irm = IRM.from_pretrained(RunDir(run).irm, host, device=host.device)
    rows = [{"prompt": p, "IRM off": g.text} for p, g in zip(prompts, generate(host, prompts, max_new_tokens=max_new_tokens))]
    with attach(host, irm) as handle:
        for s in strengths:
            handle.strength = s
            for row, g in zip(rows, generate(host, prompts, max_new_tokens=max_new_tokens)):
                row[f"IRM x{s:g}"] = g.text
    path = RunDir(run).generations
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def run_demo(settings: DemoSettings, console: Console | None = None) -> Path:
    from irm.report.html import build_report
    from irm.training.run import train

    console = console or Console(stderr=True, emoji=False)
    started = time.perf_counter()
    run = settings.out
    _step(
        console,
        f"training an IRM on {settings.data} ({settings.max_steps} steps)",
        lambda: train(settings.train_config(), overwrite=True, progress=True),
    )
    _step(
        console, "generating side by side", lambda: side_by_side(run, settings.host, DEMO_PROMPTS, max_new_tokens=settings.max_new_tokens)
    )
    for name, stage in _optional_stages(settings):
        _step(console, name, stage)
    page = _step(console, "writing the report", lambda: build_report(run))
    console.print(f"[bold cyan]irm demo[/] finished in {(time.perf_counter() - started) / 60:.1f} min")
    assert isinstance(page, Path)
    return page


def analyse(run: Path, settings: DemoSettings) -> object:
    """Record the IRM on held-out prompts (RUN/record) and analyse it (RUN/analysis)."""
    from irm.analysis.pipeline import AnalyzeOptions, analyze

    options = AnalyzeOptions(
        k=10, token_plots=3, frames=12, prompt_limit=12, neutral_limit=12, max_new_tokens=min(24, settings.max_new_tokens)
    )
    return analyze([run], RunDir(run).analysis, options)


def ablate_dominant(run: Path, settings: DemoSettings, emotion: str = "anger") -> Path:
    """Zero the IRM's dominant indices against as many random ones (RUN/ablation)."""
    from irm.core.network import IRM
    from irm.data.rows import read_prompts
    from irm.evaluation.ablation import ablate, dominant_indices
    from irm.evaluation.scoring import EmotionScorer
    from irm.hosts.loading import load_host

    host = load_host(settings.host)
    irm = IRM.from_pretrained(RunDir(run).irm, host, device=host.device)
    prompts = read_prompts("builtin:prompts")[-12:]
    options = dict(max_new_tokens=min(24, settings.max_new_tokens))
    indices = dominant_indices(host, irm, prompts[:4], 3, **options)
    result = ablate(host, irm, indices, prompts, draws=3, scorer=EmotionScorer(), target=emotion, **options)
    out = RunDir(run).ablation
    out.mkdir(exist_ok=True)
    path = out / "ablation.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def evaluate_run(run: Path, settings: DemoSettings, emotion: str = "anger") -> object:
    """IRM off vs on at strengths 1 and 2 on held-out prompts, with intervals (RUN/eval)."""
    from irm.core.adapters import load_adapter
    from irm.data.rows import read_prompts
    from irm.evaluation.evaluate import evaluate, write_report
    from irm.hosts.loading import load_host

    host = load_host(settings.host)
    adapter = load_adapter(RunDir(run).irm, host)
    prompts = read_prompts("builtin:prompts")[: settings.eval_prompts]
    report = evaluate(host, {"irm": adapter}, prompts, target=emotion, strengths=(1.0, 2.0), max_new_tokens=settings.max_new_tokens, seed=0)
    return write_report(report, RunDir(run).eval)


def _optional_stages(settings: DemoSettings) -> list[tuple[str, Callable[[], object]]]:
    """Evaluation, recording and analysis, in the run directory's eval/, analysis/, ablation/."""
    run = settings.out
    return [
        ("evaluating alignment and fluency (IRM off / x1 / x2, 95% intervals)", lambda: evaluate_run(run, settings)),
        ("recording and analysing the IRM outputs", lambda: analyse(run, settings)),
        ("ablating the dominant indices", lambda: ablate_dominant(run, settings)),
    ]
