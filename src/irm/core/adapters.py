"""Everything :func:`irm.attach` can add to a host: an IRM (full or low-rank) or a
steering vector, loaded from a directory by its ``irm_config.json``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from irm.core.config import IRMConfig
from irm.core.network import IRM
from irm.core.steering import KIND as STEERING
from irm.core.steering import SteeringVector
from irm.errors import IRMError

if TYPE_CHECKING:
    from irm.hosts.loading import Host

Adapter = IRM | SteeringVector

ADAPTER_CLASSES: dict[str, type[IRM] | type[SteeringVector]] = {"irm": IRM, STEERING: SteeringVector}
"""The registry: ``extra["kind"]`` of an ``irm_config.json`` -> the class that loads it."""


def adapter_kind(config: IRMConfig) -> str:
    """``irm``, ``low-rank irm`` or ``steering``."""
    kind = str(config.extra.get("kind", "irm"))
    if kind == "irm" and config.rank is not None:
        return "low-rank irm"
    return kind


def load_adapter(
    directory: str | Path, host: Host | None = None, *, check_host: bool = True, device: torch.device | str | None = None
) -> Adapter:
    """Load whatever adapter ``directory`` holds; refuses one made for another host."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IRMError(f"adapter directory {directory} not found", hint="pass a directory written by `irm train` or `irm steer fit`")
    kind = str(IRMConfig.load(directory).extra.get("kind", "irm"))
    cls = ADAPTER_CLASSES.get(kind)
    if cls is None:
        raise IRMError(f"{directory}: unknown adapter kind {kind!r}", hint="expected one of " + ", ".join(sorted(ADAPTER_CLASSES)))
    return cls.from_pretrained(directory, host, check_host=check_host, device=device)
