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

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
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


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return f"the {type(value).__name__} {str(value)[:40]!r}" if not isinstance(value, dict) else "a mapping"


def _names(settings: list[dict[str, Any]]) -> list[str]:
    """One folder name per run: the slug of its grid values, plus a short hash of the values
    where two runs' slugs are the same (``layers: ["0-3", "0,3"]``)."""
    slugs = ["_".join(f"{k}-{_slug(v)}" for k, v in s.items()) for s in settings]
    counts: dict[str, int] = {}
    for slug in slugs:
        counts[slug] = counts.get(slug, 0) + 1
    return [slug if counts[slug] == 1 else f"{slug}-{_settings_hash(s)}" for slug, s in zip(slugs, settings)]


def _settings_hash(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def load_sweep(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, list[Any]]]:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise IRMError(f"{path}: sweep file not found") from None
    except yaml.YAMLError as exc:
        raise IRMError(f"{path}: not valid YAML ({exc})") from None
    example = "out: runs/sweep, base: {host: ...}, grid: {seed: [1, 2]}"
    if not isinstance(spec, dict):
        raise IRMError(f"{path}: a sweep file is a mapping with out, base and grid, not {_kind(spec)}", hint=f"write e.g. {example}")
    unknown = set(spec) - {"out", "base", "grid"}
    if unknown:
        raise IRMError(f"{path}: unknown sweep key(s) {sorted(map(str, unknown))}", hint="a sweep file has out, base and grid")
    for key in ("base", "grid"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise IRMError(
                f"{path}: {key} must be a mapping of settings to {'values' if key == 'base' else 'lists of values'}, "
                f"not {_kind(spec[key])}",
                hint=f"write e.g. {example}",
            )
    if spec.get("out") is not None and not isinstance(spec["out"], str):
        raise IRMError(f"{path}: out must be a folder name, not {_kind(spec['out'])}", hint=f"write e.g. {example}")
    base = dict(spec.get("base") or {})
    grid = {k: (v if isinstance(v, list) else [v]) for k, v in (spec.get("grid") or {}).items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise IRMError(f"{path}: grid key(s) {empty} have no values", hint="give each grid key a list of one value or more")
    if not grid:
        raise IRMError(f"{path}: the grid is empty", hint="add e.g. grid: {seed: [1, 2]}")
    TrainConfig.from_dict({**base, **{k: v[0] for k, v in grid.items()}}, source=str(path))  # validate keys early
    out = Path(spec.get("out") or path.with_suffix(""))
    return out, base, grid


def expand(path: str | Path) -> tuple[Path, list[SweepRun]]:
    out, base, grid = load_sweep(path)
    return out, expand_grid(out, base, grid)


def expand_grid(out: Path, base: dict[str, Any], grid: dict[str, list[Any]]) -> list[SweepRun]:
    """Every combination of ``grid`` over ``base``, as runs under ``out/runs`` (in grid order)."""
    keys = list(grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    return [
        SweepRun(index=index, name=name, settings={**base, **settings}, run_dir=out / "runs" / name)
        for index, (settings, name) in enumerate(zip(points, _names(points)))
    ]


def train_sweep_run(run: SweepRun, *, progress: bool = True, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one run of a sweep unless it is done: a pending run from the start (replacing
    what a run killed before its first checkpoint left), an interrupted one from its last
    checkpoint. Returns its status row; ``callbacks`` are extra Lightning callbacks."""
    from irm.training.run import train

    status = run.status
    if status != "done":
        config = TrainConfig.from_dict({**run.settings, "out": str(run.run_dir)})
        resume = run.run_dir if status == "interrupted" else None
        train(config, resume=resume, overwrite=status == "pending", progress=progress, callbacks=callbacks)
    summary = RunDir(run.run_dir).read_summary()
    return {
        "index": run.index,
        "name": run.name,
        "status": "done",
        "was": status,
        "val_loss": summary.get("val_loss"),
        "run_dir": str(run.run_dir),
    }


def run_sweep(path: str | Path, *, index: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train every pending run (or only run ``index``); returns one status row per run."""
    out, runs = expand(path)
    if index is not None:
        if not 0 <= index < len(runs):
            raise IRMError(f"--index {index} is out of range: the sweep has {len(runs)} runs (0-{len(runs) - 1})")
        runs = [runs[index]]
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(Path(path).read_text(encoding="utf-8"), encoding="utf-8")
    return [train_sweep_run(run, progress=progress) for run in runs]
