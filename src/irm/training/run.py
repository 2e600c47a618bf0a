"""Train an IRM: build the run directory, the data, the Lightning trainer, and write the
final IRM.

The run directory's layout is :class:`irm.training.rundir.RunDir`.
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

from irm.core.network import IRM
from irm.data.rows import Row, read_rows, split_rows, tokenize_rows, write_jsonl
from irm.errors import DiskFullError, IRMError, TrainingDivergedError, writing
from irm.hosts.loading import load_host
from irm.training.config import TrainConfig
from irm.training.rundir import SPLITS, RunDir


@dataclass
class _RunState:
    """What a failed run must clean up: the run directory, if this call created it."""

    run: Path | None = None
    created: bool = False
    created_root: Path | None = None
    """The outermost folder this call created (the run directory or a new parent of it)."""


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


def _refuse_existing(run: Path, overwrite: bool) -> None:
    """Refuse an --out that holds something, unless --overwrite (checked before any work)."""
    if _is_launcher_child():
        return
    if run.exists() and not run.is_dir():
        raise IRMError(f"--out {run} is a file, not a directory", hint="choose another --out")
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise IRMError(
            f"output directory {run} already exists",
            hint=f"pass --overwrite to replace it, --resume {run} to continue it, or choose another --out",
        )


def _prepare_run_dir(config: TrainConfig, overwrite: bool) -> Path:
    """Create the run directory (replacing an old one with ``overwrite``); called only once
    the data, host and settings have been checked, so a bad input leaves nothing behind."""
    run = Path(config.out)
    if _is_launcher_child():
        return run
    _refuse_existing(run, overwrite)
    with writing(run):
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
    return run


def _first_missing(path: Path) -> Path:
    """The outermost folder of ``path`` that does not exist yet (what a mkdir -p creates)."""
    path = path.absolute()
    while not path.parent.exists():
        path = path.parent
    return path


def _check_examples(config: TrainConfig, host: Any, examples: dict[str, list[Any]], reports: dict[str, Any]) -> None:
    """Refuse data that cannot train: nothing left after truncation, fewer rows than one
    batch, or rows longer than the host's context."""
    report = reports["train"]
    if not examples["train"]:
        if report.dropped:
            raise IRMError(
                f"no training row fits in --max-length {config.max_length}: in all {report.dropped} training rows the "
                f"prompt (the question in the host's prompt format) fills the first {config.max_length} tokens, "
                "leaving no answer token to learn",
                hint=f"raise --max-length to at least {report.needed_length}, shorten the questions, or use --loss-on all",
            )
        raise IRMError("no training example has a trainable token", hint="check the data, or raise --max-length")
    global_batch = config.batch_size * config.devices * config.num_nodes
    if len(examples["train"]) < global_batch:
        raise IRMError(
            f"only {len(examples['train'])} training rows (after the validation/test split) for a global batch of {global_batch}",
            hint=f"lower --batch-size to {max(1, len(examples['train']) // (config.devices * config.num_nodes))} or less, or add rows",
        )
    context = host.context_length
    if context:
        long = sorted(e.line for split in SPLITS for e in examples[split] if len(e.input_ids) > context)
        if long:
            shown = ", ".join(map(str, long[:10])) + (" ..." if len(long) > 10 else "")
            raise IRMError(
                f"{len(long)} row(s) longer than host {host.name}'s context of {context} tokens at line(s) {shown} "
                f"of {config.data}, and --max-length {config.max_length} does not cut them",
                hint=f"use --max-length {context} or less (longer rows are truncated), or shorten those rows",
            )


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA or CPU allocation failure, whatever form torch raises it in."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (oom, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate")
    )


def memory_hint(config: TrainConfig) -> str:
    """The settings that reduce training memory, from the current ones."""
    options = []
    if config.batch_size > 1:
        half = config.batch_size // 2
        if config.batch_size % 2 == 0:
            options.append(f"--batch-size {half} --accumulate {config.accumulate * 2} (same effective batch, half the activations)")
        else:
            options.append(f"--batch-size {half} (with --accumulate to keep the effective batch)")
    options.append(f"--max-length {max(2, config.max_length // 2)} (shorter rows)")
    if config.rank is None:
        options.append("--rank 64 (a low-rank IRM output layer)")
    options.append("--layers with fewer injected layers (e.g. --layers 0-7)" if config.layers == "all" else "--layers with fewer injected layers")
    if config.precision in ("auto", "32-true", "32"):
        options.append("--precision bf16-mixed")
    if config.host_dtype in ("auto", "float32", "fp32"):
        options.append("--host-dtype bfloat16")
    return "reduce memory with any of: " + "; ".join(options) + ". Then train again (add --overwrite to replace the run)"


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # a damaged checkpoint: the message just leaves the step out
        return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _after_failure(state: _RunState, config: TrainConfig, exc: BaseException) -> BaseException | None:
    """Clean up after a failed run and return the error to raise instead (or None).

    A run directory this call created is removed when no checkpoint was written yet (a bad
    input or a fault before the first checkpoint leaves nothing behind); otherwise it is kept
    with its last good checkpoint."""
    run = state.run
    checkpoint = RunDir(run).checkpoint if run is not None else None
    has_checkpoint = checkpoint is not None and checkpoint.is_file()
    removed = False
    if isinstance(exc, Exception) and state.created and not has_checkpoint and run is not None and not _is_launcher_child():
        shutil.rmtree(state.created_root or run, ignore_errors=True)
        removed = True
    if is_out_of_memory(exc):
        return IRMError(f"out of memory while training ({_first_line(exc)})", hint=memory_hint(config))
    if isinstance(exc, RuntimeError) and "without overflow" in str(exc):
        # Adam's step size lr / (1 - beta1^t) does not fit in a float
        exc = TrainingDivergedError(f"the optimizer update overflowed: --lr {config.lr:g} is far too large ({_first_line(exc)})")
    if isinstance(exc, TrainingDivergedError):
        if has_checkpoint:
            step = _checkpoint_step(checkpoint)
            kept = f"{checkpoint} keeps the last good IRM weights" + (f" (step {step})" if step is not None else "")
        else:
            kept = "no checkpoint had been written yet" + (", so the run directory was removed" if removed else "")
        return TrainingDivergedError(
            exc.message,
            hint=f"{kept}. Lower --lr (now {config.lr:g}) or add --grad-clip 1.0, check the data, and train again "
            "(--overwrite replaces the run; --resume would repeat the same steps)",
        )
    if isinstance(exc, DiskFullError) and has_checkpoint:
        return DiskFullError(exc.message, hint=f"{exc.hint}; then `irm train --resume {run}` continues from its last checkpoint")
    return None


def train(config: TrainConfig, *, resume: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) one run and return where its IRM was written.

    Bad input (data, host, settings, layers) is refused before the run directory is
    created; a fault before the first checkpoint removes the directory this call created;
    later faults keep the last good checkpoint. Running out of memory says which options
    reduce it."""
    state = _RunState()
    try:
        return _train(config, resume=resume, overwrite=overwrite, progress=progress, state=state)
    except BaseException as exc:
        replacement = _after_failure(state, config, exc)
        if replacement is not None:
            raise replacement from exc
        raise


def _read_split(run: Path) -> dict[str, list[Row]]:
    out = {}
    for split in SPLITS:
        path = RunDir(run).split(split)
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


def _train(config: TrainConfig, *, resume: str | Path | None, overwrite: bool, progress: bool, state: _RunState) -> TrainResult:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from irm.training.module import (
        AtomicCheckpointIO,
        IRMTrainingModule,
        PeriodicCheckpoint,
        ThroughputMeter,
        check_finite_weights,
    )

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen host, by design
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    checkpoint: Path | None = None
    if resume is not None:
        run = Path(resume)
        if not RunDir(run).config.is_file():
            raise IRMError(f"{run} is not a run directory (no {RunDir(run).config.name})", hint="pass the --out directory of an earlier `irm train`")
        saved = TrainConfig.from_yaml(RunDir(run).config)
        # Where to run may change on resume; what to train may not.
        for key in ("devices", "num_nodes", "strategy", "accelerator"):
            setattr(saved, key, getattr(config, key))
        config = saved
        checkpoint = RunDir(run).checkpoint
        if not checkpoint.is_file():
            checkpoint = None  # killed before the first checkpoint: start over in place
        splits = _read_split(run)
    else:
        run = Path(config.out)
        _refuse_existing(run, overwrite)  # before anything slow
        rows = read_rows(config.data, limit=config.max_rows)
        splits = split_rows(rows, seed=config.seed, val_fraction=config.val_fraction, test_fraction=config.test_fraction)

    # Everything is checked before the run directory is written.
    pl.seed_everything(config.seed, workers=True, verbose=False)
    host = load_host(config.host, dtype=config.host_dtype, device="cpu")
    host.require_tokenizer()  # training needs text: refuse a model-only folder before any work
    is_zero = not _is_launcher_child()
    examples, reports = {}, {}
    for split in SPLITS:
        examples[split], reports[split] = tokenize_rows(
            splits[split], host.tokenizer, max_length=config.max_length, loss_on=config.loss_on, chat=config.chat
        )
    _check_examples(config, host, examples, reports)
    truncated = {s: r.truncated for s, r in reports.items()}
    if is_zero and any(truncated.values()):
        print(f"irm: {sum(truncated.values())} row(s) longer than {config.max_length} tokens were truncated {truncated}", file=sys.stderr)
    dropped = sorted(line for r in reports.values() for line in r.dropped_lines)
    if is_zero and dropped:
        print(
            f"irm: {len(dropped)} row(s) left out: their prompt fills --max-length {config.max_length} "
            f"(line(s) {', '.join(map(str, dropped[:10]))}{' ...' if len(dropped) > 10 else ''} of {config.data})",
            file=sys.stderr,
        )

    irm = IRM.for_host(
        host, config.layers, site=config.site, input_layer=config.input_layer, input_site=config.input_site,
        depth=config.depth, width_multiplier=config.width_multiplier, rank=config.rank,
        output_init=config.output_init, seed=config.seed,
    )
    irm.config.extra["data"] = config.data  # tells `irm evaluate` the target emotion
    if is_zero:
        if resume is None:
            state.created_root = _first_missing(Path(config.out)) if not Path(config.out).exists() else Path(config.out)
            run = _prepare_run_dir(config, overwrite)
            state.created = True
        state.run = run
        layout = RunDir(run)
        with writing(layout.split_dir):
            layout.split_dir.mkdir(parents=True, exist_ok=True)
            layout.checkpoints.mkdir(exist_ok=True)
            config.out = str(run)
            config.save(layout.config)
            if resume is None:
                for split in SPLITS:
                    write_jsonl(splits[split], layout.split(split))
    module = IRMTrainingModule(host.model, irm, config, examples["train"], examples["validation"], examples["test"], host.tokenizer.pad_token_id)
    has_val = bool(examples["validation"])
    meter = ThroughputMeter()
    callbacks: list[Any] = [PeriodicCheckpoint(RunDir(run).checkpoint, config.checkpoint_every), meter, LearningRateMonitor("step")]
    if has_val:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=config.patience, mode="min", check_on_train_epoch_end=False))
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
        logger=[CSVLogger(str(run), name="logs", version=RunDir(run).csv_version(resumed=checkpoint is not None),
                          flush_logs_every_n_steps=config.checkpoint_every),
                TensorBoardLogger(str(RunDir(run).logs), name="tensorboard", version="")],
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
    irm_dir = RunDir(run).irm
    check_finite_weights(irm, trainer.global_step)  # never write a NaN IRM (collective: every rank calls it)
    if trainer.is_global_zero:
        irm.save_pretrained(irm_dir)
        with writing(RunDir(run).summary):
            RunDir(run).summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return TrainResult(run_dir=run, irm_dir=irm_dir, summary=summary)
