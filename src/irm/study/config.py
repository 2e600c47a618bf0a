"""`StudyConfig`: every setting of ``irm study`` (one field per setting, each with its help
text), and `StudyDir`: the study folder's layout, named in one place.

The defaults are the cross-host battery run on SmolLM2 in ``docs/findings.md``: 3
alignments x 2 seeds x {all layers, layers 0-7}, 30 steps of 8 rows at lr 2e-3 with a 6-step
warm-up and rows cut to 64 tokens; 8 recorded prompts of 24 new tokens per run; top-10
indices; the top 10 ablated against 5 random draws of 10 on 24 prompts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irm.errors import IRMError

EMOTIONS = ("anger", "sadness", "joy")
STUDY_FORMAT = "irm-study/1"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class StudyConfig:
    """The settings of one study. ``host`` and ``out`` say what and where; every other field
    is part of the experiment, fixed when the study starts (``--resume`` refuses a change),
    apart from :data:`WHERE_TO_RUN`."""

    host: str = field(default="smollm2-135m-instruct", metadata=_help("Host name (see `irm hosts`), model folder or .gguf file."))
    out: str = field(default="runs/study", metadata=_help("The study folder."))
    # the sweep: alignments x seeds x layer sets
    alignments: list[str] = field(
        default_factory=lambda: list(EMOTIONS),
        metadata=_help("Alignments, comma-separated: built-in emotion sets (anger, sadness, joy) or question/answer files."),
    )
    seeds: int = field(default=2, metadata=_help("Seeds per alignment and layer set (seeds 1..N)."))
    layers: list[str] = field(
        default_factory=lambda: ["all", "0-7"], metadata=_help("Layer sets to inject into, one run each: all, a range 0-7, a list 2,3.")
    )
    # training, per run
    steps: int = field(default=30, metadata=_help("Optimizer steps per run."))
    batch_size: int = field(default=8, metadata=_help("Rows per step."))
    lr: float = field(default=2e-3, metadata=_help("Learning rate (the default is for Adam; --optimizer sgd needs its own)."))
    warmup_steps: int = field(
        default=6, metadata=_help("Linear learning-rate warm-up steps (keeps the first Adam steps from overshooting).")
    )
    max_length: int = field(default=64, metadata=_help("Training rows are cut to this many tokens (prompt format included)."))
    max_rows: int | None = field(default=None, metadata=_help("Use only the first N rows of each alignment's data (default: all)."))
    rank: int | None = field(
        default=None, metadata=_help("Low-rank IRMs: factorise each IRM's output layer through this rank (less memory on large hosts).")
    )
    checkpoint_every: int = field(default=10, metadata=_help("Checkpoint each run every N steps (a killed run resumes from there)."))
    # the basis tests of docs/findings.md section 6 (recorded only when set: see BASIS_TEST_DEFAULTS)
    optimizer: str = field(
        default="adam",
        metadata=_help("adam (the paper's) or sgd (with --momentum; it needs its own --lr: 0.01 on SmolLM2, docs/findings.md 6.2)."),
    )
    momentum: float = field(default=0.9, metadata=_help("Momentum of --optimizer sgd."))
    output_rotation: int | None = field(
        default=None,
        metadata=_help(
            "Basis test: each IRM writes its output in fixed random orthogonal bases R_l drawn from this seed and the host "
            "receives R_l @ out; striation, top indices and consistency are then also reported in the IRM's own basis."
        ),
    )
    input_rotation: int | None = field(
        default=None, metadata=_help("Basis test: each IRM reads Q @ h, Q a fixed random orthogonal matrix drawn from this seed.")
    )
    host_edit: str = field(
        default="none",
        metadata=_help(
            "Edit the host for every stage: none, untie (own copy of a tied LM head), fold-norm (final-norm gains folded into "
            "the LM head) or permute:SEED (residual basis permuted with the head and every layer); the last two keep its function."
        ),
    )
    # recording and analysis
    prompts: str = field(default="builtin:prompts", metadata=_help("Held-out prompts for recording and ablation (file or builtin:NAME)."))
    record_prompts: int = field(default=8, metadata=_help("Prompts recorded per run."))
    max_new_tokens: int = field(default=24, metadata=_help("Tokens generated per recorded prompt."))
    top_k: int = field(default=10, metadata=_help("Dominant indices per run (consistency, host outliers, gradients)."))
    neutral_prompts: int = field(default=16, metadata=_help("Neutral texts for the host's own outlier dimensions."))
    massive_ratio: float = field(
        default=100.0,
        metadata=_help("A host dimension is a massive activation when its peak |activation| is this many times the median's."),
    )
    gradient_rows: int = field(default=32, metadata=_help("Training rows (a seeded sample) for the host's loss gradient."))
    # ablation
    ablation_k: int = field(default=10, metadata=_help("Indices zeroed: each alignment's IRM's top k (at most --top-k)."))
    ablation_draws: int = field(default=5, metadata=_help("Random sets of as many indices to compare against."))
    ablation_prompts: int = field(default=24, metadata=_help("Prompts generated per ablation condition (greedy)."))
    ablation_new_tokens: int = field(default=32, metadata=_help("Tokens generated per ablation prompt."))
    # where to run
    device: str = field(default="auto", metadata=_help("auto (CUDA when present, else CPU), cpu, cuda, cuda:1 ..."))

    def __post_init__(self) -> None:
        self.alignments = [a.strip() for a in self.alignments if a.strip()]
        self.layers = [layer.strip() for layer in self.layers if layer.strip()]
        self.validate()
        self.host_edit = _canonical_edit(self.host_edit) or "none"

    def validate(self) -> None:
        positive = ("seeds", "steps", "batch_size", "max_length", "checkpoint_every", "record_prompts", "max_new_tokens", "top_k")
        checks = [(name, getattr(self, name) >= 1, "must be >= 1") for name in positive]
        checks += [
            ("neutral_prompts", self.neutral_prompts >= 1, "must be >= 1"),
            ("gradient_rows", self.gradient_rows >= 1, "must be >= 1"),
            ("ablation_draws", self.ablation_draws >= 1, "must be >= 1"),
            ("ablation_prompts", self.ablation_prompts >= 1, "must be >= 1"),
            ("ablation_new_tokens", self.ablation_new_tokens >= 1, "must be >= 1"),
            ("ablation_k", 1 <= self.ablation_k <= self.top_k, f"must be between 1 and --top-k ({self.top_k})"),
            ("max_rows", self.max_rows is None or self.max_rows >= 1, "must be >= 1"),
            ("rank", self.rank is None or self.rank >= 1, "must be >= 1"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "must be a positive number"),
            ("massive_ratio", math.isfinite(self.massive_ratio) and self.massive_ratio > 1, "must be a number above 1"),
            ("optimizer", self.optimizer in ("adam", "sgd"), "must be adam or sgd"),
            ("momentum", math.isfinite(self.momentum) and 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("output_rotation", _is_seed(self.output_rotation), "must be a whole number >= 0 (a seed)"),
            ("input_rotation", _is_seed(self.input_rotation), "must be a whole number >= 0 (a seed)"),
            ("host_edit", _canonical_edit(self.host_edit) is not None, "must be none, untie, fold-norm or permute:SEED"),
            ("alignments", bool(self.alignments), "must name at least one alignment"),
            ("layers", bool(self.layers), "must name at least one layer set"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise IRMError(
                    f"bad study setting {option(name)} {getattr(self, name)!r}: {rule}", hint=f"fix {option(name)} ({help_of(name)})"
                )
        labels = [alignment_label(a) for a in self.alignments]
        if len(set(labels)) != len(labels):
            raise IRMError(f"--alignments {','.join(self.alignments)} names an alignment twice", hint="list each alignment once")
        if len(set(self.layers)) != len(self.layers):
            raise IRMError(f"--layers {','.join(self.layers)} names a layer set twice", hint="list each layer set once")

    # ------------------------------------------------------------------ the sweep it runs
    def seed_list(self) -> list[int]:
        return list(range(1, self.seeds + 1))

    def basis_test(self) -> dict[str, Any]:
        """The basis-test settings that are set (not at their defaults): ``{}`` for the paper's battery."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k in BASIS_TEST_DEFAULTS and v != BASIS_TEST_DEFAULTS[k]}

    def train_base(self) -> dict[str, Any]:
        """The :class:`~irm.training.config.TrainConfig` settings every run shares (the basis
        tests' only when set, so that a run's settings are those of earlier studies otherwise)."""
        return {
            **self.basis_test(),
            "host": self.host,
            "max_steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "warmup_steps": self.warmup_steps,
            "max_length": self.max_length,
            "max_rows": self.max_rows,
            "rank": self.rank,
            "val_fraction": 0.01,
            "test_fraction": 0.01,
            "checkpoint_every": self.checkpoint_every,
            "log_every": 2,
        }

    def grid(self) -> dict[str, list[Any]]:
        return {"data": [alignment_data(a) for a in self.alignments], "seed": self.seed_list(), "layers": list(self.layers)}

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The settings as written to ``study.json`` (the basis tests' only when set)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in BASIS_TEST_DEFAULTS or v != BASIS_TEST_DEFAULTS[k]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "settings") -> StudyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IRMError(f"{source}: unknown study setting(s) {unknown}", hint="see `irm study --help` for the settings")
        return cls(**data)

    def experiment(self) -> dict[str, Any]:
        """The settings that define the experiment (everything but where it runs and is written)."""
        return {k: v for k, v in self.to_dict().items() if k not in WHERE_TO_RUN and k != "out"}


WHERE_TO_RUN = ("device",)
BASIS_TEST_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "momentum": 0.9,
    "output_rotation": None,
    "input_rotation": None,
    "host_edit": "none",
}
"""Settings added for the basis tests (issue 18), at their defaults: left out of ``study.json``
and the runs' settings while unset, so that studies started before them read and resume as
they were."""


def _is_seed(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def _canonical_edit(value: object) -> str | None:
    """``none``, ``untie``, ``fold-norm`` or ``permute:SEED`` as :mod:`irm.hosts.interventions`
    spells them; None for a value that is none of these."""
    from irm.hosts.interventions import parse_host_edit

    try:
        return parse_host_edit(value).name or "none"
    except IRMError:
        return None


"""The settings ``--resume`` may change: they do not change what the study measures."""


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def help_of(name: str) -> str:
    """The help text of a :class:`StudyConfig` field, for the command line."""
    for f in dataclasses.fields(StudyConfig):
        if f.name == name:
            return str(f.metadata["help"])
    raise KeyError(name)


def alignment_data(alignment: str) -> str:
    """The training data of an alignment: a bare name is a built-in set (``anger`` ->
    ``builtin:anger``); a ``builtin:`` name or a file path is used as it is."""
    if alignment.startswith("builtin:") or "/" in alignment or "." in alignment:
        return alignment
    return f"builtin:{alignment}"


def alignment_label(alignment: str) -> str:
    """The short name of an alignment (``builtin:anger`` and ``anger`` -> ``anger``; a file -> its stem)."""
    text = alignment.removeprefix("builtin:")
    return Path(text).stem if ("/" in text or "." in text) else text


@dataclass(frozen=True)
class StudyDir:
    """A study folder; every path in it comes from here.

    ::

        DIR/
          study.json        the settings (written first: it marks the folder as a study)
          runs/NAME/        one ordinary training run per alignment x seed x layer set
                            (each with RUN/record/: its IRM's outputs on the held-out prompts)
          analysis/         irm analyze of every run: stripes, top indices, consistency, host outliers
          gradients/        irm analyze --gradients train: the host's loss gradient vs each IRM
          ablation/NAME.json  top-k vs random-k ablation, one run per alignment
          stages/STAGE.json   a finished stage: its time and headline numbers (skipped on --resume)
          findings.json     the machine-readable summary (one row of the cross-host table)
          report.html       the study's page
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "study.json"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def analysis(self) -> Path:
        return self.path / "analysis"

    @property
    def gradients(self) -> Path:
        return self.path / "gradients"

    @property
    def ablation(self) -> Path:
        return self.path / "ablation"

    @property
    def stages(self) -> Path:
        return self.path / "stages"

    def stage(self, name: str) -> Path:
        return self.stages / f"{name}.json"

    @property
    def findings(self) -> Path:
        return self.path / "findings.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    ENTRIES = ("study.json", "runs", "analysis", "gradients", "ablation", "stages", "findings.json", "report.html")
    """Everything a study writes at its top level."""

    def is_study(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> StudyConfig:
        try:
            data = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IRMError(f"{self.config} is not a readable study file ({exc})", hint="start the study again with --overwrite") from None
        if not isinstance(data, dict) or data.get("format") != STUDY_FORMAT or not isinstance(data.get("settings"), dict):
            raise IRMError(f"{self.config} is not an irm study file", hint="start the study again with --overwrite")
        return StudyConfig.from_dict(data["settings"], source=str(self.config))
