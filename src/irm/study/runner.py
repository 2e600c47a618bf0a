"""`run_study`: the paper's battery on one host, as stages (:mod:`irm.study.stages`) that
each write their outputs atomically and are skipped once done, so that a study killed at any
point (``kill -9`` included) continues with ``--resume`` where it stopped. A finished stage
leaves ``stages/STAGE.json`` with its time and headline numbers; then ``findings.json`` and
``report.html`` are written from the stages' files. The folder's layout is
:class:`irm.study.config.StudyDir`.
"""

from __future__ import annotations

import gc
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from irm.core.io import atomic_write, check_output_dir, remove_stale_temporaries, remove_tree
from irm.errors import IRMError, writing
from irm.study.config import BASIS_TEST_DEFAULTS, STUDY_FORMAT, WHERE_TO_RUN, StudyConfig, StudyDir, option
from irm.study.findings import build_findings
from irm.study.stages import STAGE_FUNCTIONS
from irm.training.rundir import RunDir
from irm.training.sweep import SweepRun, expand_grid

STAGES = tuple(STAGE_FUNCTIONS)
_LEFTOVER = re.compile(r"^\..+\.(lock|tmp)$|^\..+\.(new|old)-\w+$")
"""Names of what a killed irm command leaves beside its outputs: lock files, temporary files
of atomic writes, folders being filled or deleted."""


@dataclass
class StudyResult:
    out: Path
    findings: dict[str, Any]
    report: Path
    stages: dict[str, str]
    """``ran`` or ``done earlier``, per stage."""


def study_runs(config: StudyConfig) -> list[SweepRun]:
    """The study's training runs: alignments x seeds x layer sets, under ``OUT/runs``."""
    return expand_grid(Path(config.out), config.train_base(), config.grid())


def study_status(config: StudyConfig) -> dict[str, Any]:
    """Where a study stands, without running anything: each run's status (``done``,
    ``interrupted``, ``pending``) and each stage's (``done`` or ``pending``)."""
    study = StudyDir(Path(config.out))
    return {
        "out": str(study.path),
        "runs": [{"index": r.index, "name": r.name, "status": r.status, "run_dir": str(r.run_dir)} for r in study_runs(config)],
        "stages": {name: "done" if study.stage(name).is_file() else "pending" for name in STAGES},
        "findings": study.findings.is_file(),
    }


def is_study_folder(path: Path) -> bool:
    """True for a folder that holds only what ``irm study`` writes (and what a killed irm
    command leaves): the only kind of folder ``--overwrite`` may replace."""
    study = StudyDir(path)
    if not study.is_study():
        return False
    for entry in path.iterdir():
        if entry.name not in StudyDir.ENTRIES and not _LEFTOVER.match(entry.name):
            return False
    if study.runs.is_dir():
        for entry in study.runs.iterdir():
            is_run = entry.is_dir() and not entry.is_symlink() and (RunDir(entry).is_run() or not any(entry.iterdir()))
            if not is_run and not _LEFTOVER.match(entry.name):
                return False
    return True


def run_study(
    config: StudyConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True, console: Console | None = None
) -> StudyResult:
    """Run (or continue) the study ``config`` describes and return its findings.

    A folder that holds anything is refused unless ``resume`` (it must then be a study of
    the same settings; an empty or missing folder starts a new one) or ``overwrite`` (it
    must be a study: a folder of other files is never replaced). Every input (host, layer
    sets, data, prompts) is checked before anything is written."""
    from irm.training.lock import run_lock

    if resume and overwrite:
        raise IRMError("--resume and --overwrite contradict each other", hint="--resume continues the study; --overwrite starts it again")
    study = StudyDir(Path(config.out))
    with run_lock(study.path, "--out", "irm study"):
        _remove_leftovers(study, config)
        continuing = resume and study.path.is_dir() and study.is_study()
        if continuing:
            _check_same_settings(study, config)
        elif resume and study.path.is_dir() and any(study.path.iterdir()):
            raise IRMError(
                f"--out {study.path} is not a study folder (no {study.config.name}), so --resume has nothing to continue",
                hint="choose a new folder for --out, or pass the folder of an earlier `irm study`",
            )
        else:
            check_output_dir(
                study.path, overwrite=overwrite, is_ours=is_study_folder, kind="an irm study", resume_hint=", --resume to continue it"
            )
        runner = Study(config, study, progress=progress, console=console or Console(stderr=True, emoji=False))
        runner.check_inputs()
        if not continuing:
            _start_folder(study, config)
        return runner.run()


def _remove_leftovers(study: StudyDir, config: StudyConfig) -> None:
    """Delete the temporary files a killed study left for its own files: in a study folder,
    or in one that holds nothing else (a study killed while writing its first file)."""
    if not study.path.is_dir() or study.path.is_symlink():
        return
    if not study.is_study() and not all(_LEFTOVER.match(entry.name) for entry in study.path.iterdir()):
        return
    remove_stale_temporaries(study.path, StudyDir.ENTRIES)
    remove_stale_temporaries(study.stages, [f"{s}.json" for s in STAGES])
    remove_stale_temporaries(study.ablation, [f"{r.name}.json" for r in study_runs(config)])


def _check_same_settings(study: StudyDir, config: StudyConfig) -> None:
    """``--resume`` continues the study with the settings it was started with."""
    saved = {**BASIS_TEST_DEFAULTS, **study.read_config().experiment()}  # a setting left out is at its default
    given = {**BASIS_TEST_DEFAULTS, **config.experiment()}
    changed = [key for key in saved if saved[key] != given.get(key)]
    if changed:
        shown = "; ".join(f"{option(k)} was {_text(saved[k])}, now {_text(given.get(k))}" for k in changed)
        raise IRMError(
            f"--resume {study.path} continues the study with the settings it was started with; this command changes them ({shown})",
            hint=f"drop those options (only {', '.join(option(k) for k in WHERE_TO_RUN)} may change), or start a new study with another --out",
        )


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _start_folder(study: StudyDir, config: StudyConfig) -> None:
    if study.path.exists() and any(study.path.iterdir()):
        remove_tree(study.path)  # accepted by check_output_dir: an earlier study, replaced whole
    with writing(study.path):
        study.path.mkdir(parents=True, exist_ok=True)
    document = {"format": STUDY_FORMAT, "settings": config.to_dict()}
    atomic_write(study.config, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


class Study:
    """A study being run: its settings, folder and runs, the host (loaded once, when needed),
    the progress display, and the stages' order; each stage of :mod:`irm.study.stages`
    takes it."""

    def __init__(self, config: StudyConfig, folder: StudyDir, *, progress: bool, console: Console) -> None:
        self.config = config
        self.folder = folder
        self.runs = study_runs(config)
        self.console = console
        self.show_progress = progress
        self._host: Any = None

    # ---------------------------------------------------------------- inputs, host
    def host(self) -> Any:
        if self._host is None:
            from irm.hosts.loading import load_host

            self._host = load_host(self.config.host, device=self.config.device, edit=self.config.host_edit)
        return self._host

    def release_host(self) -> None:
        """Free the host while training runs load their own copy (a 1.5 B host is 7 GB)."""
        self._host = None
        gc.collect()

    def check_inputs(self) -> None:
        """Refuse a bad host, layer set, data file or prompts file before anything is written."""
        from irm.core.layers import parse_layers
        from irm.data.rows import read_prompts, read_rows
        from irm.training.config import TrainConfig

        host = self.host()
        num_layers = len(host.spec.layers(host.model))
        for layers in self.config.layers:
            try:
                parse_layers(layers, num_layers)
            except IRMError as exc:
                raise IRMError(f"--layers: {exc.message}", hint=exc.hint) from None
        host.require_tokenizer()
        for run in self.runs:  # every training setting, checked as `irm train` checks it
            TrainConfig.from_dict({**run.settings, "out": str(run.run_dir)}, source="the study's training settings")
        for data in self.config.grid()["data"]:
            read_rows(data, limit=self.config.max_rows)
        read_prompts(self.config.prompts, limit=1)

    # ---------------------------------------------------------------- stages
    def run(self) -> StudyResult:
        from irm.report.study import study_report

        stages: dict[str, str] = {}
        with self._progress() as bar:
            self.bar = bar
            for name in STAGES:
                stages[name] = self._stage(name)
        seconds = self._stage_seconds()
        findings = build_findings(self.config, self.folder, self.runs, seconds)
        atomic_write(self.folder.findings, (json.dumps(findings, indent=2) + "\n").encode("utf-8"))
        page = study_report(self.folder.path)
        self.say(f"[bold]findings[/] {self.folder.findings}\n[bold]report[/] {page}")
        return StudyResult(self.folder.path, findings, page, stages)

    @contextmanager
    def _progress(self) -> Iterator[Progress]:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, disable=not self.show_progress) as bar:
            yield bar

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def _stage(self, name: str) -> str:
        marker = self.folder.stage(name)
        if marker.is_file():
            done = json.loads(marker.read_text(encoding="utf-8"))
            self.say(f"[bold cyan]{name}[/] done earlier: {done.get('text', '')}")
            return "done earlier"
        if name == "train":
            self.release_host()
        started = time.perf_counter()
        headline, text = STAGE_FUNCTIONS[name](self)
        seconds = time.perf_counter() - started
        record = {
            "stage": name,
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "headline": headline,
            "text": text,
        }
        with writing(self.folder.stages):
            self.folder.stages.mkdir(exist_ok=True)
        atomic_write(marker, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
        self.say(f"[bold cyan]{name}[/] {seconds:.0f} s: {text}")
        return "ran"

    def _stage_seconds(self) -> dict[str, float]:
        out = {}
        for name in STAGES:
            marker = self.folder.stage(name)
            if marker.is_file():
                out[name] = float(json.loads(marker.read_text(encoding="utf-8")).get("seconds", 0.0))
        return out

    def task(self, description: str, total: int) -> Callable[..., None]:
        task = self.bar.add_task(description, total=max(total, 0))
        return lambda **kw: self.bar.update(task, **kw)

    def analyze_options(self, **changes: Any) -> Any:
        from irm.analysis.pipeline import AnalyzeOptions

        c = self.config
        base = dict(
            k=c.top_k,
            token_plots=1,
            frames=0,
            neutral=c.prompts,
            neutral_limit=c.neutral_prompts,
            prompts=c.prompts,
            prompt_limit=c.record_prompts,
            max_new_tokens=c.max_new_tokens,
            device=c.device,
            gradient_rows=c.gradient_rows,
            gradient_max_length=c.max_length,
        )
        return AnalyzeOptions(**{**base, **changes})

    def ablation_runs(self) -> list[SweepRun]:
        """Each alignment's run with the first seed and the first layer set."""
        first_seed, first_layers = self.config.seed_list()[0], self.config.layers[0]
        return [r for r in self.runs if r.settings["seed"] == first_seed and r.settings["layers"] == first_layers]
