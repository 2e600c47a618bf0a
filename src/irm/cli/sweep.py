"""`irm sweep`: train a grid of runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from irm.cli.options import JsonOpt, console


def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="SWEEP.yaml with out, base and grid (see README).")],
    index: Annotated[Optional[int], typer.Option(help="Run only the run with this index (one cluster job per run).")] = None,
    list_runs: Annotated[bool, typer.Option("--list", help="List the runs and their status; train nothing.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Train every combination of the grid as an ordinary run directory; resumable.

    Example (SLURM array, one run per job):

      N=$(irm sweep sweep.yaml --list --json | jq length)

      sbatch --array=0-$((N-1)) --wrap 'irm sweep sweep.yaml --index $SLURM_ARRAY_TASK_ID'

    Then analyse all runs at once: irm analyze runs/sweep/runs/* --out runs/sweep/analysis
    """
    from irm.training.sweep import expand, run_sweep

    if list_runs:
        _, runs = expand(sweep_file)
        rows = [{"index": r.index, "name": r.name, "status": r.status, "run_dir": str(r.run_dir)} for r in runs]
    else:
        rows = run_sweep(sweep_file, index=index, progress=progress and not as_json)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=str(sweep_file))
    for col in ("index", "name", "status", "run_dir"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["index"]), r["name"], r["status"], r["run_dir"])
    console.print(table)
