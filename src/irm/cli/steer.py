"""`irm steer fit`: make a mean-difference steering vector, the baseline for `irm evaluate`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Optional

import typer

from irm.cli.options import DEFAULT_HOST, DeviceOpt, HostOpt, JsonOpt, console
from irm.errors import IRMError

steer_app = typer.Typer(help="Activation-steering baselines (ActAdd / CAA-style mean-difference vectors).", no_args_is_help=True)


@steer_app.command("fit")
def fit(
    out: Annotated[Path, typer.Option("--out", help="Directory to write (irm_config.json + model.safetensors).")],
    target: Annotated[str, typer.Option(help="Target-emotion question/answer data: a file or builtin:NAME.")] = "builtin:anger",
    neutral: Annotated[str, typer.Option(
        help="Neutral question/answer data (a file or builtin:NAME), or 'paired': the target file's source_answer column, "
        "the neutral answer each toned answer was made from (contrastive pairs, as in CAA).")] = "paired",
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

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise IRMError(f"output directory {out} already exists", hint="pass --overwrite or choose another --out")
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
    vector.save_pretrained(out)
    norms = [round(float(v), 3) for v in vector.vectors.float().norm(dim=0)]
    summary = {"out": str(out), "layers": vector.config.layers, "site": site, "norms": norms,
               "target_rows": len(target_rows), "neutral_rows": len(neutral_rows), "host": loaded.name}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(f"[bold]steering vector written to[/] {out}")
    console.print(f"layers {format_layers(vector.config.layers)} at {site}, norms {norms}, "
                  f"from {len(target_rows)} target and {len(neutral_rows)} neutral rows")
