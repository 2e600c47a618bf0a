"""irm: Injectable Realignment Models for frozen Hugging Face language models."""

from irm.core.adapters import load_adapter
from irm.core.attach import IRMHandle, attach, irm_output
from irm.core.config import HostIdentity, IRMConfig
from irm.core.layers import format_layers, parse_layers
from irm.core.network import IRM
from irm.core.sites import SITES, ArchitectureSpec, resolve_architecture
from irm.core.steering import SteeringVector
from irm.errors import DataError, HostError, IRMError, IRMMismatchError
from irm.hosts.generation import Generation, generate
from irm.hosts.loading import DEFAULT_HOST, Host, builtin_hosts, load_host

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_HOST", "IRM", "SITES", "ArchitectureSpec", "DataError", "Generation", "Host", "HostError",
    "HostIdentity", "IRMConfig", "IRMError", "IRMHandle", "IRMMismatchError", "SteeringVector", "attach", "builtin_hosts",
    "format_layers", "generate", "irm_output", "load_adapter", "load_host", "parse_layers", "resolve_architecture",
]
