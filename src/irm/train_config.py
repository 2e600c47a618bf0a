"""`TrainConfig`: every setting of a training run, read from YAML and overridden by flags.

The defaults are the paper's: Adam lr 1e-4, StepLR gamma 0.85 per epoch, batch 8, up to
15 epochs, early stopping with patience 6 on validation loss, seed 42, 128 tokens.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import IRMError

CONFIG_FILE = "config.yaml"


@dataclass
class TrainConfig:
    # what to train
    host: str = "smollm2-135m-instruct"
    data: str = "builtin:anger"
    layers: str = "all"
    site: str = "resid_mid"
    input_layer: int = 0
    input_site: str = "resid_mid"
    depth: int = 4
    width_multiplier: float = 3.0
    rank: int | None = None
    output_init: str = "zeros"
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
    gamma: float = 0.85
    patience: int = 6
    seed: int = 42
    accumulate: int = 1
    penalty: str = "none"
    penalty_weight: float = 1e-4
    grad_clip: float | None = None
    # engine
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
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_length >= 2, "max_length must be >= 2"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.max_steps == -1 or self.max_steps >= 1, "max_steps must be -1 (off) or >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (0 < self.gamma <= 1, "gamma must be in (0, 1]"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.accumulate >= 1, "accumulate must be >= 1"),
            (self.penalty in ("none", "l1", "l2"), "penalty must be none, l1 or l2"),
            (math.isfinite(self.penalty_weight) and self.penalty_weight >= 0, "penalty_weight must be >= 0"),
            (self.loss_on in ("answer", "all"), "loss_on must be answer or all"),
            (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1, "val/test fractions must be in [0, 1)"),
            (self.strategy in ("auto", "ddp", "fsdp", "ddp_spawn", "single"), "strategy must be auto, ddp or fsdp"),
            (self.devices >= 1 and self.num_nodes >= 1, "devices and num_nodes must be >= 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise IRMError(f"bad training setting: {message}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                raise IRMError(
                    f"{source}: unknown key {key!r}",
                    hint=f"did you mean {close[0]!r}?" if close else "see `irm train --help` for the settings",
                )
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise IRMError(f"{path}: config file not found") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise IRMError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise IRMError(f"{path}: the config must be a mapping of settings")
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
