"""`irm demo`: the main job on the embedded default host."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from irm.report.demo import DemoSettings

_DEFAULTS = DemoSettings()


def demo(
    out: Annotated[Path, typer.Option(help="Run directory for the demo.")] = _DEFAULTS.out,
    max_steps: Annotated[int, typer.Option(min=1, help="Training steps of 8 rows.")] = _DEFAULTS.max_steps,
    lr: Annotated[float, typer.Option(help="Peak learning rate (after the warm-up).")] = _DEFAULTS.lr,
    eval_prompts: Annotated[int, typer.Option(min=1, help="Held-out prompts to evaluate on.")] = _DEFAULTS.eval_prompts,
    analysis: Annotated[bool, typer.Option("--analysis/--no-analysis", help="Record and analyse the IRM's outputs.")] = True,
) -> None:
    """The main job on the embedded SmolLM2, in about 13 minutes on a 2-core CPU: train a short
    IRM on builtin:anger, evaluate it against the host on held-out prompts (p(anger), content
    kept, perplexity, distinct-n, with 95% intervals), show the answers side by side, record and
    analyse the IRM's outputs, and write the HTML report."""
    from irm.report.demo import run_demo

    settings = DemoSettings(out=out, max_steps=max_steps, lr=lr, eval_prompts=eval_prompts, analysis=analysis)
    page = run_demo(settings)
    print(f"report: {page.resolve()}")
