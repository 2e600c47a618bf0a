"""The Lightning module of IRM training: data position, steps, optimiser.

The host is a submodule (so Lightning and FSDP place it) but frozen, outside the optimizer,
and outside every checkpoint: :meth:`IRMTrainingModule.state_dict` holds the IRM alone.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from irm.core.attach import IRMHandle, attach
from irm.core.network import IRM
from irm.data.rows import Example, LengthGroupedBatches, collate
from irm.errors import IRMError, TrainingDivergedError
from irm.training.config import TrainConfig
from irm.training.engine import compile_for_training, set_activation_checkpointing
from irm.training.loss import target_loss
from irm.training.penalty import output_penalty


class IRMTrainingModule(pl.LightningModule):
    def __init__(
        self,
        host_model: torch.nn.Module,
        irm: IRM,
        config: TrainConfig,
        train: list[Example],
        val: list[Example],
        test: list[Example],
        pad_id: int,
    ) -> None:
        super().__init__()
        self.host = host_model
        self.irm = irm
        self.config = config
        self.examples = {"train": train, "validation": val, "test": test}
        self.pad_id = pad_id
        self.batches: LengthGroupedBatches | None = None
        self._resume_position: tuple[int, int] | None = None
        self._stop_on_resume = False
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
        # Early stopping decided at this epoch's validation: a resume must not train on.
        checkpoint["irm_should_stop"] = bool(self.trainer.should_stop)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        position = checkpoint.get("irm_data_position")
        if position:
            self._resume_position = (int(position["epoch"]), int(position["batches_done"]))
        self.real_tokens_seen = int(checkpoint.get("irm_real_tokens_seen", 0))
        self._stop_on_resume = bool(checkpoint.get("irm_should_stop", False))

    def on_train_start(self) -> None:
        # Lightning restores the early-stopping callback's counters but not the decision
        # it had taken; without this, a resumed run that had stopped early trains one more epoch.
        if self._stop_on_resume:
            self.trainer.should_stop = True
            self._stop_on_resume = False

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
            [len(e.input_ids) for e in train],
            cfg.batch_size,
            seed=cfg.seed,
            group_by_length=cfg.group_by_length,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
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
            [len(e.input_ids) for e in examples],
            self.config.batch_size,
            seed=0,
            shuffle=False,
            group_by_length=False,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
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
        self._eval_sums = [
            torch.zeros((), dtype=torch.float64, device=self.device),
            torch.zeros((), dtype=torch.float64, device=self.device),
        ]

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
        optimizer: torch.optim.Optimizer
        if self.config.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.config.lr, momentum=self.config.momentum, fused=fused or None)
        else:
            optimizer = torch.optim.Adam(params, lr=self.config.lr, fused=fused or None)
        decay = {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=self.config.gamma), "interval": "epoch"}
        if not self.config.warmup_steps:
            return {"optimizer": optimizer, "lr_scheduler": decay}
        # Both schedulers are chainable (each multiplies the current rate), so the warm-up ramp
        # and the per-epoch decay compose.
        warmup = {
            "scheduler": torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1 / self.config.warmup_steps, total_iters=self.config.warmup_steps - 1
            ),
            "interval": "step",
        }
        return [optimizer], [warmup, decay]
