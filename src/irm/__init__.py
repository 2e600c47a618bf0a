"""irm: Injectable Realignment Models for frozen Hugging Face language models.

The public API: :class:`IRM`, :class:`IRMConfig` (and its shape, :class:`IRMSpec`),
:func:`attach`, :class:`Host`, :func:`load_host`, :func:`generate`,
:class:`SteeringVector`, :func:`load_adapter`, :func:`train`, :class:`TrainConfig`,
:func:`evaluate`, :func:`record` and the errors. ``train``, ``TrainConfig``, ``evaluate``
and ``record`` are imported on first use (they pull in Lightning and the data stack), so
``import irm`` stays fast. Every other name is importable from its subpackage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from irm.core.adapters import load_adapter
from irm.core.attach import IRMHandle, attach, irm_output, is_attached
from irm.core.config import HostIdentity, IRMConfig, IRMSpec
from irm.core.layers import format_layers, parse_layers
from irm.core.network import IRM
from irm.core.sites import SITES, ArchitectureSpec, resolve_architecture
from irm.core.steering import SteeringVector
from irm.errors import DataError, HostError, IRMError, IRMMismatchError
from irm.hosts.generation import Generation, generate
from irm.hosts.loading import DEFAULT_HOST, Host, builtin_hosts, load_host

if TYPE_CHECKING:
    from irm.analysis.recording import record
    from irm.evaluation.evaluate import evaluate
    from irm.training.config import TrainConfig
    from irm.training.run import train

__version__ = "0.1.0"

_LAZY = {
    "train": "irm.training.run",
    "TrainConfig": "irm.training.config",
    "evaluate": "irm.evaluation.evaluate",
    "record": "irm.analysis.recording",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'irm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_HOST",
    "IRM",
    "SITES",
    "ArchitectureSpec",
    "DataError",
    "Generation",
    "Host",
    "HostError",
    "HostIdentity",
    "IRMConfig",
    "IRMError",
    "IRMHandle",
    "IRMMismatchError",
    "IRMSpec",
    "SteeringVector",
    "TrainConfig",
    "attach",
    "builtin_hosts",
    "evaluate",
    "format_layers",
    "generate",
    "irm_output",
    "is_attached",
    "load_adapter",
    "load_host",
    "parse_layers",
    "record",
    "resolve_architecture",
    "train",
]
