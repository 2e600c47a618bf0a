"""`TrainConfig`: every setting of a training run, read from YAML and overridden by flags.

The defaults are the paper's: Adam lr 1e-4, StepLR gamma 0.85 per epoch, batch 8, up to
15 epochs, early stopping with patience 6 on validation loss, seed 42, 128 tokens.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from irm.core.config import ABSENT_WHEN_DEFAULT, LAYERS_HELP, IRMSpec, spec_ordered, without_defaults
from irm.errors import IRMError, writing

PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64")
HOST_DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
OPTIMIZERS = ("adam", "sgd")
ADDED_SETTINGS: dict[str, Any] = {**ABSENT_WHEN_DEFAULT, "host_edit": "none", "optimizer": "adam", "momentum": 0.9}
"""Settings added after the first ``config.yaml`` format: written only when set, so that a
run's file without them reads back byte for byte."""
ALIASES = {
    # names other training tools use for the same setting
    "learning_rate": "lr",
    "learningrate": "lr",
    "max_epochs": "epochs",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "bs": "batch_size",
    "batchsize": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "accumulate",
    "accumulate_grad_batches": "accumulate",
    "grad_accum": "accumulate",
    "model": "host",
    "model_name": "host",
    "dataset": "data",
    "data_path": "data",
    "train_file": "data",
    "output_dir": "out",
    "output": "out",
    "out_dir": "out",
    "max_seq_length": "max_length",
    "seq_len": "max_length",
    "context_length": "max_length",
    "gpus": "devices",
    "nodes": "num_nodes",
    "irm_layers": "layers",
    "injection_layers": "layers",
    "lr_gamma": "gamma",
    "early_stopping_patience": "patience",
    "gradient_clip_val": "grad_clip",
    "max_grad_norm": "grad_clip",
}


@dataclass
class TrainConfig(IRMSpec):
    """Every setting of a run. The IRM's shape fields (``site``, ``depth``, ``rank`` ...)
    come from :class:`irm.core.config.IRMSpec`; the YAML form stays flat (``depth: 4`` at
    the top level), in the key order runs have always been written in."""

    # what to train (the IRM's shape: see IRMSpec)
    host: str = "smollm2-135m-instruct"
    data: str = "builtin:anger"
    layers: str = field(default="all", metadata={"help": LAYERS_HELP})
    host_edit: str = "none"
    """A function-preserving (or head) edit of the host before training (:mod:`irm.hosts.interventions`)."""
    # data
    max_length: int = 128
    loss_on: str = "answer"
    chat: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_rows: int | None = None
    group_by_length: bool = True
    # optimisation (paper defaults)
    epochs: int = 15
    max_steps: int = -1
    batch_size: int = 8
    lr: float = 1e-4
    optimizer: str = "adam"
    """adam (the paper's) or sgd (with ``momentum``): the basis test of docs/findings.md."""
    momentum: float = 0.9
    gamma: float = 0.85
    warmup_steps: int = 0
    """Ramp the learning rate linearly from lr/N to lr over the first N optimizer steps (0: off, as the paper)."""
    patience: int = 6
    seed: int = 42
    accumulate: int = 1
    penalty: str = "none"
    penalty_weight: float = 1e-4
    grad_clip: float | None = None
    # engine
    gradient_checkpointing: bool = False
    """Recompute host layers in the backward pass instead of storing their activations."""
    compile: bool = False
    """torch.compile the host's decoder layers (with the IRM's hooks inside) and the IRM."""
    compile_backend: str = "inductor"
    precision: str = "auto"
    host_dtype: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    checkpoint_every: int = 50
    val_every: int | None = None
    """Validate every N training steps (default: once per epoch)."""
    log_every: int = 10
    out: str = "runs/irm"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def finite(x: Any) -> bool:
            return isinstance(x, (int, float)) and math.isfinite(x)

        checks = [
            ("batch_size", self.batch_size >= 1, "must be >= 1", "8"),
            ("max_length", self.max_length >= 2, "must be >= 2", "128"),
            ("epochs", self.epochs >= 1, "must be >= 1", "15"),
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1, "must be -1 (off) or >= 1", "-1"),
            ("lr", finite(self.lr) and self.lr > 0, "must be a positive number", "1e-4"),
            ("optimizer", self.optimizer in OPTIMIZERS, "must be adam or sgd", "sgd"),
            ("momentum", finite(self.momentum) and 0 <= self.momentum < 1, "must be in [0, 1)", "0.9"),
            ("host_edit", _host_edit_ok(self.host_edit), "must be none, untie, fold-norm or permute:SEED", "fold-norm"),
            ("gamma", finite(self.gamma) and 0 < self.gamma <= 1, "must be in (0, 1]", "0.85"),
            ("patience", self.patience >= 1, "must be >= 1", "6"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0", "8"),
            ("accumulate", self.accumulate >= 1, "must be >= 1", "1"),
            ("penalty", self.penalty in ("none", "l1", "l2"), "must be none, l1 or l2", "none"),
            ("penalty_weight", finite(self.penalty_weight) and self.penalty_weight >= 0, "must be a number >= 0", "1e-4"),
            ("loss_on", self.loss_on in ("answer", "all"), "must be answer or all", "answer"),
            ("val_fraction", finite(self.val_fraction) and 0 <= self.val_fraction < 1, "must be in [0, 1)", "0.1"),
            ("test_fraction", finite(self.test_fraction) and 0 <= self.test_fraction < 1, "must be in [0, 1)", "0.1"),
            ("strategy", self.strategy in ("auto", "ddp", "fsdp", "ddp_spawn", "single"), "must be auto, ddp or fsdp", "auto"),
            ("devices", self.devices >= 1, "must be >= 1", "1"),
            ("num_nodes", self.num_nodes >= 1, "must be >= 1", "1"),
            ("checkpoint_every", self.checkpoint_every >= 1, "must be >= 1", "50"),
            ("log_every", self.log_every >= 1, "must be >= 1", "10"),
            ("val_every", self.val_every is None or self.val_every >= 1, "must be >= 1", "100"),
            ("max_rows", self.max_rows is None or self.max_rows >= 1, "must be >= 1", "1000"),
            ("grad_clip", self.grad_clip is None or (finite(self.grad_clip) and self.grad_clip > 0), "must be a positive number", "1.0"),
            ("precision", self.precision in PRECISIONS, "must be one of " + ", ".join(PRECISIONS), "bf16-mixed"),
            ("host_dtype", self.host_dtype in HOST_DTYPES, "must be one of " + ", ".join(HOST_DTYPES), "bfloat16"),
            ("accelerator", self.accelerator in ACCELERATORS, "must be one of " + ", ".join(ACCELERATORS), "auto"),
            *self.spec_checks(),
        ]
        for key, ok, rule, example in checks:
            if not ok:
                raise IRMError(
                    f"bad training setting {option(key)} {getattr(self, key)!r}: {rule}",
                    hint=f"e.g. {option(key)} {example} (or `{key}: {example}` in the YAML config)",
                )

    def to_dict(self) -> dict[str, Any]:
        return without_defaults(spec_ordered(dataclasses.asdict(self), ("host", "data", "layers")), ADDED_SETTINGS)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known:
                close = [ALIASES[key]] if key in ALIASES else difflib.get_close_matches(str(key), list(known), n=1)
                raise IRMError(
                    f"{source}: unknown key {key!r}",
                    hint=f"did you mean {close[0]!r}?" if close else "see `irm train --help` for the settings",
                )
            values[key] = _coerce(key, value, str(known[key].type), source)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise IRMError(f"{path}: config file not found", hint="check the path of the YAML config") from None
        except IsADirectoryError:
            raise IRMError(f"{path} is a directory, not a YAML config", hint="pass a .yaml file of settings") from None
        except PermissionError:
            raise IRMError(f"{path}: permission denied", hint="make the config file readable") from None
        except UnicodeDecodeError:
            raise IRMError(f"{path}: not UTF-8 text", hint="re-save the config as UTF-8") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise IRMError(f"{path}: not valid YAML{at} ({problem})", hint="write one `key: value` per line, e.g. `lr: 1.0e-4`") from None
        if not isinstance(data, dict):
            raise IRMError(
                f"{path}: the config must be a mapping of settings", hint="write one `key: value` per line, e.g. `batch_size: 8`"
            )
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        with writing(path):
            Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _host_edit_ok(value: object) -> bool:
    from irm.hosts.interventions import parse_host_edit

    try:
        parse_host_edit(value)
    except IRMError:
        return False
    return True


def option(key: str) -> str:
    """The command-line flag of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def _coerce(key: str, value: Any, annotation: str, source: str) -> Any:
    """Check a setting's type, accepting numbers written as strings (YAML reads ``1e-4`` as text)."""
    kinds = {part.strip() for part in annotation.split("|")}
    if value is None and "None" in kinds:
        return value
    if "bool" in kinds:
        if isinstance(value, bool):
            return value
        want = "true or false"
    elif "int" in kinds:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        want = "a whole number"
    elif "float" in kinds:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        want = "a number"
    else:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        want = "text"
    raise IRMError(f"{source}: {key} must be {want}, got {value!r}", hint=f"fix `{key}` in the config (or pass {option(key)})")
