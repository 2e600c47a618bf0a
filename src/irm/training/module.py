"""PyTorch Lightning pieces of IRM training: the module, the data position, atomic
checkpoints.

The host is a submodule (so Lightning and FSDP place it) but frozen, outside the optimizer,
and outside every checkpoint: :meth:`IRMTrainingModule.state_dict` holds the IRM alone.
"""

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
from torch import Tensor
from torch.utils.data import DataLoader

from irm.core.attach import IRMHandle, attach
from irm.core.io import temporary_file_beside
from irm.core.network import IRM
from irm.data.rows import IGNORE_INDEX, Example, LengthGroupedBatches, collate
from irm.errors import IRMError, TrainingDivergedError, writing
from irm.training.config import TrainConfig


def token_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token NLL and the number of target tokens. The one shift: position t
    predicts ``labels[t + 1]``; ``-100`` (prompt, padding) is ignored."""
    pred = logits[:, :-1, :].float()
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll, (target != IGNORE_INDEX).sum()


def target_loss(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`token_loss` without materialising logits the loss ignores: the LM head runs
    only at positions whose next token is a target (answer tokens, not prompt or padding),
    and, for a frozen LM head, in chunks (:class:`FrozenHeadCrossEntropy`)."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    selected, wanted = hidden[:, :-1][keep], target[keep]
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if not cap and head.bias is None and not head.weight.requires_grad:
        return FrozenHeadCrossEntropy.apply(selected, head.weight, wanted), keep.sum()
    logits = head(selected)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    nll = torch.nn.functional.cross_entropy(logits.float(), wanted, reduction="sum")
    return nll, keep.sum()


class FrozenHeadCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``target`` for a frozen LM head.

    The logits are made ``CHUNK`` rows at a time and the gradient with respect to
    ``hidden`` (``(softmax - onehot) @ weight``) is computed with them, while the chunk is
    still in cache: the full ``(tokens, vocab)`` logits never exist, and softmax, its
    backward and the loss's zero-fill are not separate passes over them."""

    CHUNK = 256

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, target: Tensor) -> Tensor:
        total = hidden.new_zeros((), dtype=torch.float32)
        need_grad = hidden.requires_grad
        grad = torch.empty_like(hidden) if need_grad else None
        for start in range(0, hidden.shape[0], FrozenHeadCrossEntropy.CHUNK):
            h = hidden[start : start + FrozenHeadCrossEntropy.CHUNK]
            t = target[start : start + FrozenHeadCrossEntropy.CHUNK]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                grad[start : start + len(t)] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output.to(grad.dtype) if grad.numel() else None), None, None


def set_activation_checkpointing(model: torch.nn.Module, active: bool = True) -> None:
    """Recompute the host's decoder layers during backward. transformers checkpoints a layer
    only while that layer is in training mode, so the layer modules (not their children,
    which keep dropout off) are flagged as training."""
    from irm.core.sites import resolve_architecture

    if active and not getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in resolve_architecture(model).layers(model):
        layer.training = active


def compile_for_training(model: torch.nn.Module, irm: torch.nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` each decoder layer of the host and the IRM, in place (parameter names
    and checkpoints stay the same). The IRM's hooks on modules inside a layer are traced
    into that layer's graph; layers of one shape share their compiled code."""
    from irm.core.sites import resolve_architecture

    for layer in resolve_architecture(model).layers(model):
        layer.compile(backend=backend)
    irm.compile(backend=backend)


def output_penalty(delta: Tensor, attention_mask: Tensor, kind: str) -> Tensor:
    """Mean |x| (l1) or x^2 (l2) over every element of the IRM output at real tokens, so
    its weight does not depend on batch size, length or the number of layers."""
    mask = attention_mask.to(delta.dtype)[..., None, None]
    values = delta.abs() if kind == "l1" else delta.square()
    return (values * mask).sum() / (mask.sum() * delta.shape[-2] * delta.shape[-1]).clamp_min(1)


class IRMTrainingModule(pl.LightningModule):
    def __init__(self, host_model: torch.nn.Module, irm: IRM, config: TrainConfig, train: list[Example], val: list[Example], test: list[Example], pad_id: int) -> None:
        super().__init__()
        self.host = host_model
        self.irm = irm
        self.config = config
        self.examples = {"train": train, "validation": val, "test": test}
        self.pad_id = pad_id
        self.batches: LengthGroupedBatches | None = None
        self._resume_position: tuple[int, int] | None = None
        self.strict_loading = True
        self.real_tokens_seen = 0
        self._handle: IRMHandle | None = None
        self._captured: list[Tensor] = []
        if config.compile:
            compile_for_training(host_model, irm, config.compile_backend)

    # Keep the frozen host in eval mode (no dropout) whatever Lightning asks.
    def train(self, mode: bool = True) -> IRMTrainingModule:
        super().train(mode)
        self.host.eval()
        if self.config.gradient_checkpointing:
            set_activation_checkpointing(self.host, mode)
        return self

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        return {f"irm.{k}": v for k, v in self.irm.state_dict().items()}

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False) -> Any:
        keys = {k[len("irm.") :]: v for k, v in state_dict.items() if k.startswith("irm.")}
        other = sorted(k for k in state_dict if not k.startswith("irm."))
        if other:
            raise IRMError(f"checkpoint holds non-IRM weights ({other[:3]}...)", hint="resume only from irm's own run directories")
        return self.irm.load_state_dict(keys, strict=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["irm_data_position"] = {"epoch": self.current_epoch, "batches_done": self._batches_done_in_epoch()}
        checkpoint["irm_real_tokens_seen"] = self.real_tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        position = checkpoint.get("irm_data_position")
        if position:
            self._resume_position = (int(position["epoch"]), int(position["batches_done"]))
        self.real_tokens_seen = int(checkpoint.get("irm_real_tokens_seen", 0))

    def _batches_done_in_epoch(self) -> int:
        # called from on_train_batch_end (current batch processed, not yet "completed")
        # or on_train_epoch_end (every batch processed); Lightning's counter includes the
        # batches restored on resume.
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    # ---------------------------------------------------------------- data
    def train_dataloader(self) -> DataLoader:
        train = self.examples["train"]
        cfg = self.config
        self.batches = LengthGroupedBatches(
            [len(e.input_ids) for e in train], cfg.batch_size, seed=cfg.seed,
            group_by_length=cfg.group_by_length, rank=self.global_rank, world_size=self.trainer.world_size,
        )
        if self._resume_position is not None:
            # Lightning keeps counting the batches it restored; we leave them out of the data.
            self.batches.epoch, self.batches.skip = self._resume_position
            self._resume_position = None
        return DataLoader(train, batch_sampler=self.batches, collate_fn=self._collate)

    def on_train_epoch_start(self) -> None:
        # Lightning only calls set_epoch on samplers, not on a batch sampler; the batches
        # of an epoch are drawn lazily, after this hook.
        assert self.batches is not None
        self.batches.set_epoch(self.current_epoch)

    def _eval_loader(self, split: str) -> DataLoader:
        examples = sorted(self.examples[split], key=lambda e: len(e.input_ids))
        batches = LengthGroupedBatches(
            [len(e.input_ids) for e in examples], self.config.batch_size, seed=0, shuffle=False, group_by_length=False,
            rank=self.global_rank, world_size=self.trainer.world_size,
        )
        tail = len(examples) % (self.config.batch_size * self.trainer.world_size)
        if tail and self.trainer.world_size == 1:
            full = list(batches)
            full.append(list(range(len(examples) - tail, len(examples))))
            return DataLoader(examples, batch_sampler=full, collate_fn=self._collate)
        return DataLoader(examples, batch_sampler=batches, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _collate(self, items: list[Example]) -> dict[str, Tensor]:
        return collate(items, self.pad_id)

    # ---------------------------------------------------------------- steps
    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        # One handle for the whole run, not one per step: with gradient checkpointing the
        # backward pass re-runs host layers, and their hooks must still be there.
        if self._handle is None:
            self._handle = attach(self.host, self.irm, transform=self._capture if self.config.penalty != "none" else None)
        self._captured.clear()
        nll, count = target_loss(self.host, batch["input_ids"], batch["attention_mask"], batch["labels"])
        penalty = output_penalty(self._captured[0], batch["attention_mask"], self.config.penalty) if self._captured else None
        return nll, count, penalty

    def _capture(self, delta: Tensor) -> Tensor:
        self._captured.append(delta)
        return delta

    def teardown(self, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._captured.clear()

    def _global(self, value: Tensor) -> Tensor:
        if dist.is_available() and dist.is_initialized():
            value = value.clone()
            dist.all_reduce(value)
        return value

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        nll, count, penalty = self._loss(batch)
        # Normalise by the *global* number of target tokens; DDP averages gradients over
        # ranks, hence the world-size factor. The result equals one process on the
        # same global batch.
        global_count = self._global(count.detach().float()).clamp_min(1)
        loss = nll * self.trainer.world_size / global_count
        if penalty is not None:
            loss = loss + self.config.penalty_weight * penalty
        global_nll = self._global(nll.detach())
        mean_nll = global_nll / global_count
        if not torch.isfinite(mean_nll):
            raise TrainingDivergedError(
                f"training loss became {mean_nll.item()} at step {self.global_step}; stopped before the bad update",
                hint="the last good checkpoint is kept in the run directory; lower --lr or add --grad-clip 1.0 and train again",
            )
        tokens = int(self._global(batch["attention_mask"].sum().detach()).item())
        self.real_tokens_seen += tokens
        self.log("train_loss", mean_nll, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0])
        if penalty is not None:
            self.log("train_penalty", penalty.detach(), on_step=True, batch_size=batch["input_ids"].shape[0])
        self.log("real_tokens", float(self.real_tokens_seen), on_step=True, reduce_fx="max")
        return loss

    def _eval_step(self, batch: dict[str, Tensor], prefix: str) -> None:
        nll, count, _ = self._loss(batch)
        self._eval_sums[0] += nll.detach().double()
        self._eval_sums[1] += count.detach().double()

    def _eval_start(self) -> None:
        self._eval_sums = [torch.zeros((), dtype=torch.float64, device=self.device), torch.zeros((), dtype=torch.float64, device=self.device)]

    def _eval_end(self, prefix: str) -> None:
        nll, count = self._global(self._eval_sums[0]), self._global(self._eval_sums[1])
        loss = (nll / count.clamp_min(1)).float()
        self.log(f"{prefix}_loss", loss, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log(f"{prefix}_ppl", torch.exp(loss.clamp(max=50)), sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        params = [p for p in self.irm.parameters() if p.requires_grad]
        fused = self.device.type == "cuda"
        optimizer = torch.optim.Adam(params, lr=self.config.lr, fused=fused or None)
        decay = {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=self.config.gamma), "interval": "epoch"}
        if not self.config.warmup_steps:
            return {"optimizer": optimizer, "lr_scheduler": decay}
        # Both schedulers are chainable (each multiplies the current rate), so the warm-up ramp
        # and the per-epoch decay compose.
        warmup = {"scheduler": torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / self.config.warmup_steps,
                                                                 total_iters=self.config.warmup_steps - 1), "interval": "step"}
        return [optimizer], [warmup, decay]


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
    """Save ``last.ckpt`` every ``every`` optimizer steps and at the end of each epoch."""

    def __init__(self, path: Path, every: int) -> None:
        self.path = path
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every == 0 and _step_boundary(trainer):
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
