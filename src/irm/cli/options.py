"""Options and consoles shared by every command: each defined once, here."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from irm.hosts.interventions import HOST_EDIT_HELP
from irm.hosts.loading import DEFAULT_HOST

__all__ = ["DEFAULT_HOST", "DeviceOpt", "ForceOpt", "HostEditOpt", "HostOpt", "IRMHostOpt", "JsonOpt", "console", "err_console"]

console = Console(emoji=False)  # data names such as builtin:anger: must not turn into emoji
err_console = Console(stderr=True, emoji=False)

HostOpt = Annotated[str, typer.Option("--host", help="Built-in host name (see `irm hosts`), local model folder or .gguf file.")]
IRMHostOpt = Annotated[Optional[str], typer.Option("--host", help="Host name or folder (default: the IRM's own host).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1 ...")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Use the IRM even if it was made for another host.")]
HostEditOpt = Annotated[str, typer.Option("--host-edit", help=HOST_EDIT_HELP)]
