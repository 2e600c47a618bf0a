"""`irm steer fit`: make a mean-difference steering vector, the baseline for `irm evaluate`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from irm.cli.options import DEFAULT_HOST, DeviceOpt, HostOpt, JsonOpt, console
from irm.core.io import check_output_dir, remove_stale_temporaries

steer_app = typer.Typer(help="Activation-steering baselines (ActAdd / CAA-style mean-difference vectors).", no_args_is_help=True)


@steer_app.command("fit")
def fit(
    out: Annotated[Path, typer.Option("--out", help="Directory to write (irm_config.json + model.safetensors).")],
    target: Annotated[str, typer.Option(help="Target-emotion question/answer data: a file or builtin:NAME.")] = "builtin:anger",
    neutral: Annotated[
        str,
        typer.Option(
            help="Neutral question/answer data (a file or builtin:NAME), or 'paired': the target file's source_answer column, "
            "the neutral answer each toned answer was made from (contrastive pairs, as in CAA)."
        ),
    ] = "paired",
    host: HostOpt = DEFAULT_HOST,
    layers: Annotated[Optional[str], typer.Option(help="Injected layers: 15, 10-12, all ... (default: the middle layer).")] = None,
    site: Annotated[str, typer.Option(help="resid_mid (as the paper's IRM), resid_pre or resid_post.")] = "resid_mid",
    max_rows: Annotated[int, typer.Option(min=1, help="Average over at most this many rows of each file (a seeded sample).")] = 256,
    max_length: Annotated[int, typer.Option(min=2, help="Truncate rows to this many tokens.")] = 128,
    emotion: Annotated[Optional[str], typer.Option(help="Target emotion to record (default: read from the --target name).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the row sample.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory's files.")] = False,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Fit a steering vector: per layer, the mean hidden state at SITE over the answer tokens
    of the target data minus that over the neutral data (by default the neutral answers the
    target answers were made from). Attach it like an IRM; `--strength` scales it. Examples:

      irm steer fit --target builtin:anger --layers 15 --out runs/anger-steer

      irm steer fit --target my_angry.csv --neutral builtin:neutral --layers 10-12 --out runs/steer
    """
    from irm.core.layers import format_layers
    from irm.core.steering import fit_steering_vector
    from irm.data.rows import read_pairs, read_rows
    from irm.hosts.loading import load_host

    check_adapter_out(out, overwrite=overwrite)
    rng = random.Random(seed)
    if neutral == "paired":
        target_rows, neutral_rows = read_pairs(target)
        keep = sorted(rng.sample(range(len(target_rows)), min(max_rows, len(target_rows))))
        target_rows, neutral_rows = [target_rows[i] for i in keep], [neutral_rows[i] for i in keep]
    else:
        target_rows, neutral_rows = (read_rows(src) for src in (target, neutral))
        target_rows, neutral_rows = (rng.sample(rows, min(max_rows, len(rows))) for rows in (target_rows, neutral_rows))
    loaded = load_host(host, device=device)
    chosen = layers or str(loaded.num_layers // 2)
    extra = {"target": target, "neutral": neutral, **({"emotion": emotion} if emotion else {})}
    vector = fit_steering_vector(loaded, target_rows, neutral_rows, chosen, site=site, max_length=max_length, extra=extra)
    save_adapter(vector, out)
    norms = [round(float(v), 3) for v in vector.vectors.float().norm(dim=0)]
    summary = {
        "out": str(out),
        "layers": vector.config.layers,
        "site": site,
        "norms": norms,
        "target_rows": len(target_rows),
        "neutral_rows": len(neutral_rows),
        "host": loaded.name,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(f"[bold]steering vector written to[/] {out}")
    console.print(
        f"layers {format_layers(vector.config.layers)} at {site}, norms {norms}, "
        f"from {len(target_rows)} target and {len(neutral_rows)} neutral rows"
    )


ADAPTER_FILES = ("irm_config.json", "model.safetensors")


def is_adapter_folder(directory: Path) -> bool:
    """True for a folder that holds only an IRM's or steering vector's files."""
    entries = list(directory.iterdir())
    return bool(entries) and all(e.name in ADAPTER_FILES and e.is_file() and not e.is_symlink() for e in entries)


def check_adapter_out(out: Path, *, overwrite: bool) -> Path:
    """Check, before any work, that an IRM or steering vector can be written to ``out``;
    ``--overwrite`` replaces only such a folder (never one with other files)."""
    remove_stale_temporaries(out, ADAPTER_FILES)
    return check_output_dir(out, overwrite=overwrite, is_ours=is_adapter_folder, kind="an IRM or steering-vector folder")


def save_adapter(adapter: Any, out: Path) -> None:
    """``adapter.save_pretrained(out)`` (atomic per file: an old adapter in ``out`` survives a
    failed write), removing the folders it made when it fails."""
    import shutil

    from irm.core.io import outermost_missing

    created = outermost_missing(out)  # the outermost folder this call creates, if any
    try:
        adapter.save_pretrained(out)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)  # leave no half-made folder behind
        raise
