"""`irm import-reference`: turn a checkpoint of the paper's code into an IRM directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from irm.cli.options import DEFAULT_HOST, HostOpt, JsonOpt, console
from irm.cli.steer import check_adapter_out, save_adapter


def import_reference(
    ckpt: Annotated[Path, typer.Argument(help="Lightning .ckpt file written by the paper's training code.")],
    out: Annotated[Path, typer.Option("--out", help="IRM directory to write.")],
    host: HostOpt = DEFAULT_HOST,
    layers: Annotated[Optional[str], typer.Option(help="Injected layers (e.g. 2,3 or 0-7) when the checkpoint does not say.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --out (replaces its IRM files).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Import an IRM from a checkpoint of the published implementation.

    The file is loaded with weights_only=True (no pickled code runs) and memory-mapped; the
    repeated IRM copies are checked equal and matched against the host. Example:

      irm import-reference epoch=3.ckpt --host ./Llama-2-7b-hf --out runs/angry-ref
    """
    check_adapter_out(out, overwrite=overwrite)
    from irm.core.layers import format_layers
    from irm.hosts.loading import load_host
    from irm.training.reference_import import (
        irm_from_reference,
        read_reference_checkpoint,
    )

    ref = read_reference_checkpoint(ckpt)
    loaded_host = load_host(host, device="cpu")
    model = irm_from_reference(ref, loaded_host, layers=layers)
    save_adapter(model, out)
    summary = {
        "out": str(out),
        "layers": model.config.layers,
        "hidden_size": model.config.hidden_size,
        "parameters": model.num_parameters(),
        "copies_checked": len(ref.copies),
        "host": loaded_host.name,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(f"[bold]IRM written to[/] {out}")
    console.print(
        f"layers {format_layers(model.config.layers)}, hidden {summary['hidden_size']}, "
        f"{summary['parameters']:,} parameters; {summary['copies_checked']} identical copies in the checkpoint"
    )
