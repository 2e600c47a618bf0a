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
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from irm.core.io import check_output_dir, outermost_missing, remove_tree
from irm.core.network import IRM
from irm.data.rows import (
    Example,
    Row,
    read_rows,
    split_rows,
    tokenize_rows,
    write_jsonl,
)
from irm.errors import DiskFullError, IRMError, TrainingDivergedError, writing
from irm.hosts.loading import Host, load_host
from irm.training.config import TrainConfig
from irm.training.lock import run_lock
from irm.training.rundir import SPLITS, RunDir


@dataclass
class _RunState:
    """What a failed run must clean up: the run directory, if this call created it."""

    run: Path | None = None
    created: bool = False
    created_root: Path | None = None
    """The outermost folder this call created (the run directory or a new parent of it)."""
    lock: ExitStack = field(default_factory=ExitStack)
    """Holds the lock on the run folder until the run and its clean-up are over."""


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
    """Refuse, before any work, an --out that holds something (unless --overwrite), and with
    --overwrite anything but an irm run that can be replaced whole: never a folder of other
    files, ``.``, ``~`` or ``/``, nor a run with a part that cannot be deleted."""
    if _is_launcher_child():
        return
    if run.exists() and not run.is_dir() and not run.is_symlink():
        raise IRMError(f"--out {run} is a file, not a directory", hint="choose another --out")
    if run.is_dir() and not run.is_symlink() and any(run.iterdir()) and not overwrite:
        raise IRMError(
            f"output directory {run} already exists",
            hint=f"pass --overwrite to replace it, --resume {run} to continue it, or choose another --out",
        )
    check_output_dir(
        run, overwrite=overwrite, is_ours=lambda p: RunDir(p).is_run(), kind="irm runs", resume_hint=f", --resume {run} to continue it"
    )


def _prepare_run_dir(config: TrainConfig, overwrite: bool) -> Path:
    """Create the run directory (replacing an old one with ``overwrite``); called only once
    the data, host and settings have been checked, so a bad input leaves nothing behind."""
    run = Path(config.out)
    if _is_launcher_child():
        return run
    _refuse_existing(run, overwrite)
    if run.exists():
        remove_tree(run)  # moved aside whole, then deleted: never half a run under its name
    with writing(run):
        run.mkdir(parents=True)
    return run


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
    options.append(
        "--layers with fewer injected layers (e.g. --layers 0-7)" if config.layers == "all" else "--layers with fewer injected layers"
    )
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


def train(
    config: TrainConfig,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train (or resume) one run and return where its IRM was written; ``callbacks`` are
    extra Lightning callbacks (e.g. a caller's own progress display).

    Bad input (data, host, settings, layers) is refused before the run directory is
    created; a fault before the first checkpoint removes the directory this call created;
    later faults keep the last good checkpoint. Running out of memory says which options
    reduce it."""
    state = _RunState()
    try:
        return _train(config, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks, state=state)
    except BaseException as exc:
        replacement = _after_failure(state, config, exc)
        if replacement is not None:
            raise replacement from exc
        raise
    finally:
        state.lock.close()  # after any clean-up: no other irm train may start on a half-removed run


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


_QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*module\\(s\\) in eval mode.*",  # the frozen host, by design
    ".*smaller than the logging interval.*",
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*resuming from a checkpoint that ended before the epoch ended.*",
)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's warnings that do not apply to IRM training, for the body only:
    the caller's warning filters and Lightning's log level are as they were afterwards."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    with warnings.catch_warnings():
        for message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(level)


@dataclass
class _Inputs:
    """What a run trains on, checked: the settings, where, from which checkpoint, the rows."""

    config: TrainConfig
    run: Path
    checkpoint: Path | None
    splits: dict[str, list[Row]]


def _inputs(config: TrainConfig, resume: str | Path | None, overwrite: bool) -> _Inputs:
    """The settings and rows of a new run (refusing a bad --out before anything slow), or
    those saved in the run to resume."""
    if resume is None:
        run = Path(config.out)
        _refuse_existing(run, overwrite)  # before anything slow
        rows = read_rows(config.data, limit=config.max_rows)
        splits = split_rows(rows, seed=config.seed, val_fraction=config.val_fraction, test_fraction=config.test_fraction)
        return _Inputs(config, run, None, splits)
    run = Path(resume)
    if not RunDir(run).config.is_file():
        raise IRMError(
            f"{run} is not a run directory (no {RunDir(run).config.name})", hint="pass the --out directory of an earlier `irm train`"
        )
    saved = TrainConfig.from_yaml(RunDir(run).config)
    # Where to run may change on resume; what to train may not.
    for key in WHERE_TO_RUN:
        setattr(saved, key, getattr(config, key))
    checkpoint: Path | None = RunDir(run).checkpoint
    if not checkpoint.is_file():
        checkpoint = None  # killed before the first checkpoint: start over in place
    return _Inputs(saved, run, checkpoint, _read_split(run))


WHERE_TO_RUN = ("devices", "num_nodes", "strategy", "accelerator")
"""The settings that ``--resume`` takes from the command line; every other one comes from the run."""


def _tokenize(config: TrainConfig, host: Host, splits: dict[str, list[Row]]) -> tuple[dict[str, list[Example]], dict[str, Any]]:
    """Tokenize every split, refuse data that cannot train, and say what was cut or left out."""
    examples, reports = {}, {}
    for split in SPLITS:
        examples[split], reports[split] = tokenize_rows(
            splits[split], host.require_tokenizer(), max_length=config.max_length, loss_on=config.loss_on, chat=config.chat
        )
    _check_examples(config, host, examples, reports)
    if not _is_launcher_child():
        truncated = {s: r.truncated for s, r in reports.items()}
        if any(truncated.values()):
            print(
                f"irm: {sum(truncated.values())} row(s) longer than {config.max_length} tokens were truncated {truncated}", file=sys.stderr
            )
        dropped = sorted(line for r in reports.values() for line in r.dropped_lines)
        if dropped:
            print(
                f"irm: {len(dropped)} row(s) left out: their prompt fills --max-length {config.max_length} "
                f"(line(s) {', '.join(map(str, dropped[:10]))}{' ...' if len(dropped) > 10 else ''} of {config.data})",
                file=sys.stderr,
            )
    return examples, reports


def _build_irm(config: TrainConfig, host: Host) -> IRM:
    irm = IRM.for_host(host, config.layers, config.irm_spec(), seed=config.seed)
    irm.config.extra["data"] = config.data  # tells `irm evaluate` the target emotion
    irm.config.extra["optimizer"] = {"name": config.optimizer, "lr": config.lr}
    if config.optimizer == "sgd":
        irm.config.extra["optimizer"]["momentum"] = config.momentum
    return irm


def _write_run_dir(inputs: _Inputs, *, resumed: bool, overwrite: bool, state: _RunState) -> Path:
    """Create (or, for --resume, reuse) the run directory and write its config and split;
    only rank zero writes."""
    config, run = inputs.config, inputs.run
    if _is_launcher_child():
        return run
    if not resumed:
        state.created_root = outermost_missing(config.out) or Path(config.out)
        run = _prepare_run_dir(config, overwrite)
        state.created = True
    state.run = run
    layout = RunDir(run)
    with writing(layout.split_dir):
        layout.split_dir.mkdir(parents=True, exist_ok=True)
        layout.checkpoints.mkdir(exist_ok=True)
        config.out = str(run)
        config.save(layout.config)
        if not resumed:
            for split in SPLITS:
                write_jsonl(inputs.splits[split], layout.split(split))
    return run


def _build_trainer(
    config: TrainConfig, run: Path, examples: dict[str, list[Example]], *, resumed: bool, progress: bool, extra: Sequence[Any] = ()
) -> tuple[Any, Any]:
    """The Lightning trainer of a run and its throughput meter."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from irm.training.callbacks import (
        AtomicCheckpointIO,
        PeriodicCheckpoint,
        ThroughputMeter,
        TrainingProgressBar,
    )

    has_val = bool(examples["validation"])
    meter = ThroughputMeter()
    callbacks: list[Any] = [PeriodicCheckpoint(RunDir(run).checkpoint, config.checkpoint_every), meter, LearningRateMonitor("step"), *extra]
    if progress:
        callbacks.append(TrainingProgressBar())
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
        logger=[
            CSVLogger(
                str(run), name="logs", version=RunDir(run).csv_version(resumed=resumed), flush_logs_every_n_steps=config.checkpoint_every
            ),
            TensorBoardLogger(str(RunDir(run).logs), name="tensorboard", version=""),
        ],
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
    return trainer, meter


def _fit_and_test(trainer: Any, module: Any, inputs: _Inputs, has_test: bool) -> tuple[float, float | None]:
    """Train (from the checkpoint, if any) and score the test split: the wall time and the
    test loss. A SIGTERM (a cluster's pre-emption) saves a checkpoint and stops the run."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    started = time.perf_counter()
    try:
        trainer.fit(module, ckpt_path=str(inputs.checkpoint) if inputs.checkpoint else None, weights_only=True)
    except SIGTERMException:
        raise _stopped_by_sigterm(inputs.run, trainer) from None
    elapsed = time.perf_counter() - started
    if trainer.received_sigterm:  # between the last step and the end of fit: the checkpoint is saved
        raise _stopped_by_sigterm(inputs.run, trainer)
    test_loss = None
    if has_test:
        results = trainer.test(module, verbose=False)
        test_loss = results[0].get("test_loss") if results else None
    return elapsed, test_loss


def _stopped_by_sigterm(run: Path, trainer: Any) -> IRMError:
    step = _checkpoint_step(RunDir(run).checkpoint) if RunDir(run).checkpoint.is_file() else None
    saved = (
        f"its checkpoint (step {step}) is saved in {RunDir(run).checkpoint}" if step is not None else "no checkpoint had been written yet"
    )
    return IRMError(
        f"irm train was stopped by SIGTERM at step {trainer.global_step}; {saved}",
        hint=f"continue it with: irm train --resume {run}",
    )


def _summary(
    config: TrainConfig,
    run: Path,
    irm: IRM,
    trainer: Any,
    module: Any,
    meter: Any,
    splits: dict[str, list[Row]],
    examples: dict[str, list[Example]],
    reports: dict[str, Any],
    elapsed: float,
    test_loss: float | None,
) -> dict[str, Any]:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    checksum = irm_checksum(irm)
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, checksum)
        rank_checksums = list(gathered)
    else:
        rank_checksums = [checksum]
    return {
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
        "truncated_rows": {s: r.truncated for s, r in reports.items()},
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


def _write_outputs(run: Path, irm: IRM, trainer: Any, summary: dict[str, Any]) -> Path:
    """Write the final IRM and the summary (rank zero), never a NaN IRM."""
    from irm.training.callbacks import check_finite_weights

    irm_dir = RunDir(run).irm
    check_finite_weights(irm, trainer.global_step)  # collective: every rank calls it
    if trainer.is_global_zero:
        irm.save_pretrained(irm_dir)
        with writing(RunDir(run).summary):
            RunDir(run).summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return irm_dir


def _train(
    config: TrainConfig, *, resume: str | Path | None, overwrite: bool, progress: bool, callbacks: Sequence[Any], state: _RunState
) -> TrainResult:
    import lightning.pytorch as pl

    from irm.training.module import IRMTrainingModule

    inputs = _inputs(config, resume, overwrite)
    config = inputs.config
    if not _is_launcher_child():
        state.lock.enter_context(run_lock(inputs.run, "--resume" if resume is not None else "--out"))
        if resume is None:
            _refuse_existing(inputs.run, overwrite)  # again, now that no other irm train can change it
    # Everything is checked before the run directory is written.
    with _quiet_lightning():
        pl.seed_everything(config.seed, workers=True, verbose=False)
        host = load_host(config.host, dtype=config.host_dtype, device="cpu", edit=config.host_edit)
        tokenizer = host.require_tokenizer()  # training needs text: refuse a model-only folder before any work
        examples, reports = _tokenize(config, host, inputs.splits)
        irm = _build_irm(config, host)
        run = _write_run_dir(inputs, resumed=resume is not None, overwrite=overwrite, state=state)
        module = IRMTrainingModule(
            host.model, irm, config, examples["train"], examples["validation"], examples["test"], tokenizer.pad_token_id
        )
        trainer, meter = _build_trainer(config, run, examples, resumed=inputs.checkpoint is not None, progress=progress, extra=callbacks)
        elapsed, test_loss = _fit_and_test(trainer, module, inputs, bool(examples["test"]))
    summary = _summary(config, run, irm, trainer, module, meter, inputs.splits, examples, reports, elapsed, test_loss)
    irm_dir = _write_outputs(run, irm, trainer, summary)
    return TrainResult(run_dir=run, irm_dir=irm_dir, summary=summary)
