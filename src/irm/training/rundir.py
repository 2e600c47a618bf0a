"""`RunDir`: the layout of a training run's folder, named in one place.

::

    RUN/
      config.yaml            the fully resolved TrainConfig
      split/                 train.jsonl, validation.jsonl, test.jsonl (the exact rows used)
      checkpoints/last.ckpt  IRM + optimizer + scheduler + progress (no host weights)
      logs/csv/metrics.csv   every logged metric (logs/csv-resumed-N/ after each resume)
      logs/tensorboard/      the same for TensorBoard
      irm/                   the final IRM (irm_config.json + model.safetensors)
      summary.json           losses, token counts, speed, truncation, rank consistency
      generations.json       side-by-side generations (irm demo)
      eval/ record/ analysis/ ablation/   what evaluate, record, analyze and ablate wrote
      report.html            irm report
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class RunDir:
    """A training run's folder; every path in it comes from here."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def split_dir(self) -> Path:
        return self.path / "split"

    def split(self, name: str) -> Path:
        return self.split_dir / f"{name}.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def irm(self) -> Path:
        return self.path / "irm"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def generations(self) -> Path:
        return self.path / "generations.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def record(self) -> Path:
        return self.path / "record"

    @property
    def analysis(self) -> Path:
        return self.path / "analysis"

    @property
    def ablation(self) -> Path:
        return self.path / "ablation"

    def csv_version(self, *, resumed: bool) -> str:
        """``csv`` for a fresh run; ``csv-resumed-N`` after each resume, so that the metrics
        logged before an interruption are kept (Lightning would overwrite that file)."""
        if not resumed:
            return "csv"
        n = 1
        while (self.logs / f"csv-resumed-{n}").exists():
            n += 1
        return f"csv-resumed-{n}"

    def metrics_files(self) -> list[Path]:
        """Every CSV metrics file of the run, in the order they were written."""
        resumed = sorted(self.logs.glob("csv-resumed-*/metrics.csv"), key=lambda p: int(p.parent.name.rsplit("-", 1)[1]))
        return [p for p in [self.logs / "csv" / "metrics.csv", *resumed] if p.is_file()]

    def is_run(self) -> bool:
        """True for a folder written by ``irm train`` (it has config.yaml or summary.json)."""
        return self.config.is_file() or self.summary.is_file()

    def read_summary(self) -> dict[str, Any]:
        """The run's summary, or ``{}`` while it has none (unfinished)."""
        if not self.summary.is_file():
            return {}
        data = json.loads(self.summary.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    @property
    def status(self) -> str:
        """``done`` (summary written), ``interrupted`` (a checkpoint, no summary) or ``pending``."""
        if self.summary.is_file():
            return "done"
        if self.checkpoint.is_file():
            return "interrupted"
        return "pending"


def irm_dir_of(path: str | Path) -> Path | None:
    """``path`` itself when it holds an IRM, ``RUN/irm`` for a run folder, else None."""
    path = Path(path)
    for candidate in (path, RunDir(path).irm):
        if (candidate / "irm_config.json").is_file():
            return candidate
    return None
