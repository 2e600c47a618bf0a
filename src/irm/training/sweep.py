"""A grid of training runs (alignments x seeds x layer sets ...), each an ordinary run directory.

SWEEP.yaml::

    out: runs/sweep                  # the sweep directory
    base:                            # TrainConfig settings shared by every run
      host: smollm2-135m-instruct
      max_steps: 100
    grid:                            # every combination becomes one run
      data: [builtin:anger, builtin:sadness, builtin:joy]
      seed: [1, 2]
      layers: ["all", "0-7"]

Runs that finished (``summary.json``) are skipped, runs with a checkpoint are resumed, so the
same command continues an interrupted sweep. ``--index I`` runs only the I-th run, for one
cluster job per run (e.g. a SLURM array).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from irm.errors import IRMError
from irm.training.config import TrainConfig
from irm.training.rundir import RunDir

SWEEP_FILE = "sweep.yaml"


@dataclass
class SweepRun:
    index: int
    name: str
    settings: dict[str, Any]
    run_dir: Path

    @property
    def status(self) -> str:
        return RunDir(self.run_dir).status


def _slug(value: Any) -> str:
    text = str(value).replace("builtin:", "")
    text = Path(text).stem if ("/" in text or "." in text) and not re.fullmatch(r"[\d.e+-]+", text) else text
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "x"


def load_sweep(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, list[Any]]]:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise IRMError(f"{path}: sweep file not found") from None
    except yaml.YAMLError as exc:
        raise IRMError(f"{path}: not valid YAML ({exc})") from None
    unknown = set(spec) - {"out", "base", "grid"}
    if unknown:
        raise IRMError(f"{path}: unknown sweep key(s) {sorted(unknown)}", hint="a sweep file has out, base and grid")
    base = dict(spec.get("base") or {})
    grid = {k: (v if isinstance(v, list) else [v]) for k, v in (spec.get("grid") or {}).items()}
    if not grid:
        raise IRMError(f"{path}: the grid is empty", hint="add e.g. grid: {seed: [1, 2]}")
    TrainConfig.from_dict({**base, **{k: v[0] for k, v in grid.items()}}, source=str(path))  # validate keys early
    out = Path(spec.get("out") or path.with_suffix(""))
    return out, base, grid


def expand(path: str | Path) -> tuple[Path, list[SweepRun]]:
    out, base, grid = load_sweep(path)
    keys = list(grid)
    runs = []
    for index, values in enumerate(itertools.product(*(grid[k] for k in keys))):
        settings = dict(zip(keys, values))
        name = "_".join(f"{k}-{_slug(v)}" for k, v in settings.items())
        runs.append(SweepRun(index=index, name=name, settings={**base, **settings}, run_dir=out / "runs" / name))
    return out, runs


def run_sweep(path: str | Path, *, index: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train every pending run (or only run ``index``); returns one status row per run."""
    from irm.training.run import train

    out, runs = expand(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(Path(path).read_text(encoding="utf-8"), encoding="utf-8")
    if index is not None:
        if not 0 <= index < len(runs):
            raise IRMError(f"--index {index} is out of range: the sweep has {len(runs)} runs (0-{len(runs) - 1})")
        runs = [runs[index]]
    rows = []
    for run in runs:
        status = run.status
        if status != "done":
            config = TrainConfig.from_dict({**run.settings, "out": str(run.run_dir)})
            train(config, resume=run.run_dir if status == "interrupted" else None, overwrite=status == "pending", progress=progress)
        summary = RunDir(run.run_dir).read_summary()
        rows.append({"index": run.index, "name": run.name, "status": "done", "was": status,
                     "val_loss": summary.get("val_loss"), "run_dir": str(run.run_dir)})
    return rows
