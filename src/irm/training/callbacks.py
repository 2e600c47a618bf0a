"""Checkpoint IO and training callbacks: atomic checkpoints, periodic saves, the
finite-weights guard, throughput, the progress bar."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from irm.core.io import temporary_file_beside
from irm.errors import IRMError, TrainingDivergedError, writing


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the target:
    a crash leaves either the old checkpoint or the new one, never half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        with writing(path):  # a full disk becomes a clear error; the old checkpoint stays
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = temporary_file_beside(path)
            try:
                with os.fdopen(fd, "wb") as fh:
                    torch.save(checkpoint, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Always ``weights_only=True``: a checkpoint that holds pickled code is refused."""
        import pickle

        fix = f"delete {path} to restart the run from step 0 with --resume, or train again with --overwrite"
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            text = str(exc)
            if "Unsupported global" in text or "GLOBAL" in text:
                found = text.split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in text else "a Python object"
                raise IRMError(
                    f"refused to load {path}: it holds pickled Python objects ({found}), not just tensors; irm reads "
                    "checkpoints with weights_only=True and never runs code from them",
                    hint=f"irm did not write this file; {fix}",
                ) from None
            raise IRMError(f"{path} is not a readable checkpoint ({_first_line(text)})", hint=f"the file is damaged; {fix}") from None
        except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
            raise IRMError(
                f"{path} is not a readable checkpoint ({type(exc).__name__}: {_first_line(str(exc))})",
                hint=f"the file is damaged; {fix}",
            ) from None


def _first_line(text: str) -> str:
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "no details"


def check_finite_weights(irm: torch.nn.Module, step: int) -> None:
    """Raise :class:`TrainingDivergedError` if any IRM weight is NaN or infinite (an update
    can break the weights while the loss that produced it was still finite). Collective
    under DDP/FSDP, so every rank stops together."""
    bad = [name for name, p in irm.named_parameters() if not bool(torch.isfinite(p).all())]
    flag = torch.tensor(float(bool(bad)), device=next(irm.parameters()).device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag)
    if flag.item() > 0:
        where = f" ({bad[0]})" if bad else " (on another process)"
        raise TrainingDivergedError(
            f"the IRM weights became NaN or infinite{where} after step {step}; stopped without saving them",
            hint="the last good checkpoint is kept in the run directory; lower --lr or add --grad-clip 1.0 and train again",
        )


class PeriodicCheckpoint(pl.Callback):
    """Save ``last.ckpt`` every ``every`` optimizer steps, at the end of each epoch, and at
    the first step boundary after a SIGTERM (Lightning then stops the run)."""

    def __init__(self, path: Path, every: int) -> None:
        self.path = path
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # Lightning restores a checkpoint taken after an epoch's last batch but before its
            # end as a finished epoch and counts one epoch too many, so the resumed run drew
            # other batches. The epoch-end save below (after validation) is exact; a SIGTERM in
            # the last batch keeps the previous checkpoint.
            return
        due = trainer.global_step > 0 and trainer.global_step % self.every == 0
        if (due or trainer.received_sigterm) and _step_boundary(trainer):
            self._save(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._save(trainer, module)

    def _save(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # A checkpoint must never hold broken weights: "the last good checkpoint" stays good.
        check_finite_weights(module.irm, trainer.global_step)
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state: optimizer, loops, callbacks


def _step_boundary(trainer: pl.Trainer) -> bool:
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    return done % max(1, trainer.accumulate_grad_batches) == 0 or math.isinf(done)


class ThroughputMeter(pl.Callback):
    """Seconds spent in training batches and the real (non-padding) tokens they held."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.tokens = 0
        self._start = 0.0
        self._seen = 0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()
        self._seen = module.real_tokens_seen

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds += time.perf_counter() - self._start
        self.tokens += module.real_tokens_seen - self._seen


class TrainingProgressBar(TQDMProgressBar):
    """One bar for the training steps, with the time left and the logged losses only: no
    logger version (``v_num``), and no separate bars for the validation and test passes."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    @property
    def total_train_batches(self) -> int | float:
        """Batches in this epoch, or to ``max_steps`` if that comes first: the time left is the run's."""
        total = super().total_train_batches
        trainer = self.trainer
        if trainer.max_steps > 0:
            left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
            done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
            total = min(total, done + left)
        return total

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_test_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)
