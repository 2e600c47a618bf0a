"""irm: Injectable Realignment Models for frozen Hugging Face language models."""

from .adapters import load_adapter
from .architectures import SITES, ArchitectureSpec, resolve_architecture
from .attach import IRMHandle, attach, irm_output
from .config import HostIdentity, IRMConfig
from .errors import DataError, HostError, IRMError, IRMMismatchError
from .generation import Generation, generate
from .hosts import DEFAULT_HOST, Host, builtin_hosts, load_host
from .layerspec import format_layers, parse_layers
from .model import IRM
from .steering import SteeringVector

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_HOST", "IRM", "SITES", "ArchitectureSpec", "DataError", "Generation", "Host", "HostError",
    "HostIdentity", "IRMConfig", "IRMError", "IRMHandle", "IRMMismatchError", "SteeringVector", "attach", "builtin_hosts",
    "format_layers", "generate", "irm_output", "load_adapter", "load_host", "parse_layers", "resolve_architecture",
]
