"""`irm train`: flags override the YAML config, which overrides the paper defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from irm.cli.options import console
from irm.core.config import spec_help
from irm.hosts.interventions import HOST_EDIT_HELP
from irm.training.config import TrainConfig

Opt = typer.Option
_FLAGS = ("devices", "num_nodes", "strategy")
"""The where-to-run settings that are command-line flags (accelerator is set in a config file)."""


def train(
    config_file: Annotated[Optional[Path], typer.Argument(help="YAML file of settings (see README); flags override it.")] = None,
    host: Annotated[Optional[str], Opt(help="Host name or folder [default: the embedded SmolLM2].")] = None,
    data: Annotated[Optional[str], Opt(help="CSV/JSONL/Parquet file with question+answer or text columns, or builtin:NAME.")] = None,
    layers: Annotated[Optional[str], Opt(help=spec_help("layers"))] = None,
    site: Annotated[Optional[str], Opt(help=spec_help("site"))] = None,
    rank: Annotated[Optional[int], Opt(help=spec_help("rank"))] = None,
    depth: Annotated[Optional[int], Opt(help=spec_help("depth"))] = None,
    width_multiplier: Annotated[Optional[float], Opt(help=spec_help("width_multiplier"))] = None,
    out: Annotated[Optional[str], Opt(help="Run directory to create [runs/irm].")] = None,
    epochs: Annotated[Optional[int], Opt(help="Maximum epochs [15].")] = None,
    max_steps: Annotated[Optional[int], Opt(help="Stop after this many optimizer steps (-1: off).")] = None,
    batch_size: Annotated[Optional[int], Opt(help="Rows per batch per device [8].")] = None,
    lr: Annotated[Optional[float], Opt(help="Learning rate [1e-4] (SGD needs a much larger one: docs/findings.md).")] = None,
    optimizer: Annotated[Optional[str], Opt(help="adam (the paper's) or sgd (with --momentum) [adam].")] = None,
    momentum: Annotated[Optional[float], Opt(help="Momentum of --optimizer sgd [0.9].")] = None,
    output_rotation: Annotated[Optional[int], Opt(help=spec_help("output_rotation"))] = None,
    input_rotation: Annotated[Optional[int], Opt(help=spec_help("input_rotation"))] = None,
    host_edit: Annotated[Optional[str], Opt(help=HOST_EDIT_HELP)] = None,
    warmup_steps: Annotated[
        Optional[int], Opt(help="Linear learning-rate warm-up over N steps; stops the first Adam steps from overshooting at high --lr [0].")
    ] = None,
    seed: Annotated[Optional[int], Opt(help="Seed for the split, init and data order [42].")] = None,
    max_length: Annotated[Optional[int], Opt(help="Truncate rows to this many tokens [128].")] = None,
    loss_on: Annotated[Optional[str], Opt(help="answer (default) or all tokens.")] = None,
    penalty: Annotated[Optional[str], Opt(help="none, l1 or l2 penalty on the IRM output.")] = None,
    penalty_weight: Annotated[Optional[float], Opt(help="Weight of the penalty (per-element mean) [1e-4].")] = None,
    precision: Annotated[Optional[str], Opt(help="auto, 32-true, bf16-mixed, 16-mixed ...")] = None,
    host_dtype: Annotated[Optional[str], Opt(help="Host weights: auto (bf16 on GPU), float32, bfloat16.")] = None,
    gradient_checkpointing: Annotated[
        Optional[bool], Opt("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute host layers in backward (less memory).")
    ] = None,
    compile: Annotated[
        Optional[bool],
        Opt("--compile/--no-compile", help="torch.compile the host's decoder layers and the IRM (slower first steps; off by default)."),
    ] = None,
    devices: Annotated[Optional[int], Opt(help="Processes/GPUs per node [1].")] = None,
    num_nodes: Annotated[Optional[int], Opt(help="Nodes (SLURM: see README) [1].")] = None,
    strategy: Annotated[Optional[str], Opt(help="auto, ddp or fsdp.")] = None,
    accumulate: Annotated[Optional[int], Opt(help="Gradient accumulation steps [1].")] = None,
    checkpoint_every: Annotated[Optional[int], Opt(help="Save checkpoints/last.ckpt every N steps [50].")] = None,
    val_every: Annotated[Optional[int], Opt(help="Validate every N steps (default: each epoch).")] = None,
    log_every: Annotated[Optional[int], Opt(help="Log training metrics every N steps [10].")] = None,
    max_rows: Annotated[Optional[int], Opt(help="Use only the first N rows of the data.")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue the run in this directory from its last checkpoint.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --out directory.")] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Show a progress bar.")] = True,
    as_json: Annotated[bool, Opt("--json", help="Print the run summary as JSON.")] = False,
) -> None:
    """Train an IRM on a frozen host (paper defaults: Adam 1e-4, StepLR 0.85/epoch, batch 8,
    patience 6, seed 42, 128 tokens).

    Examples:

      irm train --data builtin:anger --layers all --out runs/anger

      irm train sweep.yaml --seed 7 --devices 2      # 2 processes (DDP)

      irm train --resume runs/anger                  # continue after an interruption
    """
    from irm.training.run import train as run_training

    given = dict(locals())
    flags = {k: v for k, v in given.items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    if resume is not None:
        _refuse_settings_on_resume(resume, config_file, flags, overwrite)
    base = TrainConfig.from_yaml(config_file).to_dict() if config_file else {}
    config = TrainConfig.from_dict({**base, **flags}, source=str(config_file or "flags"))
    result = run_training(config, resume=resume, overwrite=overwrite, progress=progress)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    if as_json:
        print(json.dumps(result.summary, indent=2))
    else:
        s = result.summary
        console.print(f"[bold]IRM written to[/] {result.irm_dir}")
        console.print(
            f"steps {s['global_step']}, train loss {s['train_loss']}, val loss {s['val_loss']}, test loss {s['test_loss']}, "
            f"{s['real_tokens_per_second'] or 0:.0f} real tokens/s"
        )


def _refuse_settings_on_resume(resume: Path, config_file: Optional[Path], flags: dict[str, object], overwrite: bool) -> None:
    """--resume continues a run with the settings saved in it: only where to run may change."""
    from irm.errors import IRMError
    from irm.training.run import WHERE_TO_RUN

    ignored = [f"--{k.replace('_', '-')}" for k in flags if k not in WHERE_TO_RUN]
    if overwrite:
        ignored.append("--overwrite")
    if config_file is not None:
        ignored.insert(0, f"the config file {config_file}")
    if ignored:
        allowed = ", ".join(f"--{k.replace('_', '-')}" for k in WHERE_TO_RUN if k in _FLAGS)
        raise IRMError(
            f"--resume {resume} continues the run with the settings saved in it; it cannot take {', '.join(ignored)}",
            hint=f"drop them (with --resume only {allowed}, --progress and --json apply), or start a new run with another --out",
        )
