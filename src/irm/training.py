"""Train an IRM: build the run directory, the data, the Lightning trainer, and write the
final IRM.

Run directory layout::

    RUN/
      config.yaml            the fully resolved TrainConfig
      split/                 train.jsonl, validation.jsonl, test.jsonl (the exact rows used)
      checkpoints/last.ckpt  IRM + optimizer + scheduler + progress (no host weights)
      logs/csv/metrics.csv   every logged metric
      logs/tensorboard/      the same for TensorBoard
      irm/                   the final IRM (irm_config.json + model.safetensors)
      summary.json           losses, token counts, speed, truncation, rank consistency
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import Row, read_rows, split_rows, tokenize_rows, write_jsonl
from .errors import IRMError
from .hosts import load_host
from .model import IRM
from .train_config import CONFIG_FILE, TrainConfig

SPLITS = ("train", "validation", "test")


@dataclass
class TrainResult:
    run_dir: Path
    irm_dir: Path
    summary: dict[str, Any]


def irm_checksum(irm: IRM) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(irm.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _is_launcher_child() -> bool:
    """True in the extra processes that Lightning's DDP launcher starts (rank > 0 here)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _prepare_run_dir(config: TrainConfig, overwrite: bool) -> Path:
    run = Path(config.out)
    if _is_launcher_child():
        return run
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise IRMError(
                f"output directory {run} already exists",
                hint=f"pass --overwrite to replace it, --resume {run} to continue it, or choose another --out",
            )
        shutil.rmtree(run)
    return run


def _read_split(run: Path) -> dict[str, list[Row]]:
    out = {}
    for split in SPLITS:
        path = run / "split" / f"{split}.jsonl"
        out[split] = read_rows(path) if path.is_file() and path.stat().st_size else []
    return out


def _precision(config: TrainConfig, accelerator: str) -> str:
    if config.precision != "auto":
        return config.precision
    if accelerator in ("cuda", "gpu") and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _strategy(config: TrainConfig) -> Any:
    if config.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(use_orig_params=True)
    if config.strategy == "auto":
        return "ddp" if config.devices * config.num_nodes > 1 else "auto"
    if config.strategy == "single":
        return "auto"
    return config.strategy


def train(config: TrainConfig, *, resume: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) one run and return where its IRM was written."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .lightning_module import AtomicCheckpointIO, IRMTrainingModule, PeriodicCheckpoint, ThroughputMeter

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    checkpoint: Path | None = None
    if resume is not None:
        run = Path(resume)
        if not (run / CONFIG_FILE).is_file():
            raise IRMError(f"{run} is not a run directory (no {CONFIG_FILE})", hint="pass the --out directory of an earlier `irm train`")
        saved = TrainConfig.from_yaml(run / CONFIG_FILE)
        # Where to run may change on resume; what to train may not.
        for key in ("devices", "num_nodes", "strategy", "accelerator"):
            setattr(saved, key, getattr(config, key))
        config = saved
        checkpoint = run / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            checkpoint = None  # killed before the first checkpoint: start over in place
        splits = _read_split(run)
    else:
        run = _prepare_run_dir(config, overwrite)
        rows = read_rows(config.data, limit=config.max_rows)
        splits = split_rows(rows, seed=config.seed, val_fraction=config.val_fraction, test_fraction=config.test_fraction)

    pl.seed_everything(config.seed, workers=True, verbose=False)
    host = load_host(config.host, dtype=config.host_dtype, device="cpu")
    is_zero = not _is_launcher_child()
    if is_zero:
        (run / "split").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints").mkdir(exist_ok=True)
        config.out = str(run)
        config.save(run / CONFIG_FILE)
        if resume is None:
            for split in SPLITS:
                write_jsonl(splits[split], run / "split" / f"{split}.jsonl")

    examples, reports = {}, {}
    for split in SPLITS:
        examples[split], reports[split] = tokenize_rows(
            splits[split], host.tokenizer, max_length=config.max_length, loss_on=config.loss_on, chat=config.chat
        )
    if not examples["train"]:
        raise IRMError("no training example has a trainable token", hint="check the data, or raise --max-length")
    if len(examples["train"]) < config.batch_size * config.devices * config.num_nodes:
        raise IRMError(
            f"only {len(examples['train'])} training rows for a global batch of {config.batch_size * config.devices * config.num_nodes}",
            hint="lower --batch-size or add rows",
        )
    truncated = {s: r.truncated for s, r in reports.items()}
    if is_zero and any(truncated.values()):
        print(f"irm: {sum(truncated.values())} row(s) longer than {config.max_length} tokens were truncated {truncated}", file=sys.stderr)

    irm = IRM.for_host(
        host, config.layers, site=config.site, input_layer=config.input_layer, input_site=config.input_site,
        depth=config.depth, width_multiplier=config.width_multiplier, rank=config.rank,
        output_init=config.output_init, seed=config.seed,
    )
    module = IRMTrainingModule(host.model, irm, config, examples["train"], examples["validation"], examples["test"], host.tokenizer.pad_token_id)
    has_val = bool(examples["validation"])
    meter = ThroughputMeter()
    callbacks: list[Any] = [PeriodicCheckpoint(run / "checkpoints" / "last.ckpt", config.checkpoint_every), meter, LearningRateMonitor("epoch")]
    if has_val:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=config.patience, mode="min"))
    n_batches = max(1, len(examples["train"]) // (config.batch_size * config.devices * config.num_nodes))
    accelerator = config.accelerator if config.accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    trainer = pl.Trainer(
        default_root_dir=str(run),
        accelerator=accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=_strategy(config),
        precision=_precision(config, accelerator),
        max_epochs=config.epochs,
        max_steps=config.max_steps,
        accumulate_grad_batches=config.accumulate,
        gradient_clip_val=config.grad_clip,
        logger=[CSVLogger(str(run), name="logs", version="csv"), TensorBoardLogger(str(run / "logs"), name="tensorboard", version="")],
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=config.log_every,
        val_check_interval=min(config.val_every, n_batches) if config.val_every else 1.0,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    started = time.perf_counter()
    trainer.fit(module, ckpt_path=str(checkpoint) if checkpoint else None, weights_only=True)
    elapsed = time.perf_counter() - started
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    test_loss = None
    if examples["test"]:
        results = trainer.test(module, verbose=False)
        test_loss = results[0].get("test_loss") if results else None

    checksum = irm_checksum(irm)
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, checksum)
        rank_checksums = list(gathered)
    else:
        rank_checksums = [checksum]
    summary = {
        "run_dir": str(run),
        "host": config.host,
        "data": config.data,
        "layers": irm.config.layers,
        "irm_parameters": irm.num_parameters(),
        "global_step": trainer.global_step,
        "epochs_completed": trainer.current_epoch,
        "stopped_early": bool(getattr(trainer, "should_stop", False)) and trainer.current_epoch < config.epochs and config.max_steps == -1,
        "train_loss": metrics.get("train_loss_epoch", metrics.get("train_loss_step")),
        "val_loss": metrics.get("val_loss"),
        "val_ppl": metrics.get("val_ppl"),
        "test_loss": test_loss,
        "rows": {s: len(splits[s]) for s in SPLITS},
        "examples": {s: len(examples[s]) for s in SPLITS},
        "truncated_rows": truncated,
        "dropped_rows": {s: r.dropped for s, r in reports.items()},
        "real_tokens_seen": module.real_tokens_seen,
        "train_seconds": meter.seconds,
        "real_tokens_per_second": meter.tokens / meter.seconds if meter.seconds else None,
        "wall_seconds": elapsed,
        "world_size": trainer.world_size,
        "irm_checksum": checksum,
        "rank_checksums": rank_checksums,
        "ranks_identical": len(set(rank_checksums)) == 1,
    }
    irm_dir = run / "irm"
    if trainer.is_global_zero:
        irm.save_pretrained(irm_dir)
        (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return TrainResult(run_dir=run, irm_dir=irm_dir, summary=summary)
