"""`irm report`: one self-contained HTML page per run or sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from irm.cli.options import console


def report(
    target: Annotated[Path, typer.Argument(help="A run directory (irm train --out) or a sweep directory.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write [TARGET/report.html].")] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace an existing --out file (TARGET/report.html, the report's own page, is always rewritten)."
        ),
    ] = False,
) -> None:
    """Write one HTML page that tells a run's (or a sweep's) story: settings, loss curves,
    generations, evaluation with intervals, heatmaps, dominant indices, ablations.

    The page is self-contained (images inline, nothing loaded from the internet). Run it
    again to re-render TARGET/report.html; an --out file that exists is replaced only with
    --overwrite."""
    from irm.report.html import build_report

    path = build_report(target, out, overwrite=overwrite)
    console.print(f"report written to {path}")
