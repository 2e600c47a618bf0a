"""`irm demo`: the main job on the embedded default host."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option(help="Run directory for the demo.")] = Path("runs/demo"),
    max_steps: Annotated[int, typer.Option(help="Training steps (about 10 s each on a 2-core CPU).")] = 40,
) -> None:
    """The main job on the embedded SmolLM2: train a short IRM on builtin:anger, compare
    generations, evaluate, record and analyse its outputs, and write the HTML report."""
    from irm.report.demo import DemoSettings, run_demo

    page = run_demo(DemoSettings(out=out, max_steps=max_steps))
    print(f"report: {page.resolve()}")
