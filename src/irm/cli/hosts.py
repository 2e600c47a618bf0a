"""`irm hosts`: the built-in hosts and whether each is ready offline."""

from __future__ import annotations

import json

from rich.table import Table

from irm.cli.options import JsonOpt, console


def hosts(as_json: JsonOpt = False) -> None:
    """List the built-in hosts and whether each is ready to load offline."""
    from irm.hosts.loading import (
        DEFAULT_HOST,
        builtin_hosts,
        is_cached,
        smollm2_cache_path,
    )

    rows = []
    for name in builtin_hosts():
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_HOST,
                "cached": is_cached(name),
                "source": str(smollm2_cache_path()) if name == DEFAULT_HOST else "random weights, built in memory",
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in hosts")
    for col in ("name", "cached", "source"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"] + (" (default)" if row["default"] else ""), "yes" if row["cached"] else "no", row["source"])
    console.print(table)
