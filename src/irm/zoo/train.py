"""Pre-train one zoo model: the same batches, optimiser and schedule for every variant,
resumable from a checkpoint, and its validation perplexity with a bootstrap interval.

Batch ``s`` is drawn from a generator seeded with ``(recipe.seed, s)``, and nothing else is
random after the seeded initialisation, so a run resumed from its checkpoint sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from irm.core.io import atomic_write
from irm.zoo.corpus import Corpus
from irm.zoo.modeling import ZooForCausalLM
from irm.zoo.variants import Recipe, Variant

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_SECONDS = 60.0
EVAL_BATCH = 16
LOSS_WINDOW = 20


@dataclass
class Perplexity:
    loss: float
    """Mean next-token NLL (nats) over the evaluated tokens."""
    tokens: int
    ci95: tuple[float, float]
    """95% bootstrap interval of the perplexity, resampling evaluation windows."""

    @property
    def value(self) -> float:
        return math.exp(self.loss)


@dataclass
class TrainState:
    step: int = 0
    seconds: float = 0.0
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    """``(step, train loss, learning rate)`` of every step."""
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    """``(step, validation loss on the first eval_tokens)``."""


def learning_rate(recipe: Recipe, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    floor = recipe.min_lr_ratio
    return recipe.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch(recipe: Recipe, tokens: np.ndarray, step: int) -> torch.Tensor:
    """Batch ``step``: ``batch_size`` random windows of ``seq_len + 1`` tokens."""
    rng = np.random.default_rng([recipe.seed, step])
    starts = rng.integers(0, len(tokens) - recipe.seq_len - 1, size=recipe.batch_size)
    return torch.from_numpy(np.stack([tokens[s : s + recipe.seq_len + 1] for s in starts]).astype(np.int64))


def new_model(recipe: Recipe, variant: Variant) -> ZooForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return ZooForCausalLM(recipe.model_config(variant))


def optimizer(model: ZooForCausalLM, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings, not on norm gains and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8)


@torch.no_grad()
def perplexity(model: ZooForCausalLM, tokens: np.ndarray, seq_len: int, *, max_tokens: int | None = None, seed: int = 0) -> Perplexity:
    """Next-token perplexity over consecutive windows of ``seq_len`` tokens of ``tokens``."""
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    windows = (len(tokens) - 1) // seq_len
    if windows < 1:
        raise ValueError(f"need more than {seq_len} validation tokens, have {len(tokens)}")
    was_training = model.training
    model.eval()
    sums = []
    for start in range(0, windows, EVAL_BATCH):
        rows = range(start, min(windows, start + EVAL_BATCH))
        chunk = torch.from_numpy(np.stack([tokens[r * seq_len : r * seq_len + seq_len + 1] for r in rows]).astype(np.int64))
        logits = model(chunk[:, :-1], use_cache=False).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none").sum(dim=1)
        sums.extend(nll.tolist())
    model.train(was_training)
    per_window = np.asarray(sums) / seq_len
    rng = np.random.default_rng(seed)
    boots = per_window[rng.integers(0, windows, size=(1000, windows))].mean(axis=1)
    low, high = np.exp(np.percentile(boots, [2.5, 97.5]))
    return Perplexity(float(per_window.mean()), windows * seq_len, (float(low), float(high)))


def train_variant(
    recipe: Recipe,
    variant: Variant,
    corpus: Corpus,
    work: Path,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
) -> tuple[ZooForCausalLM, TrainState]:
    """Train ``variant`` for ``recipe.steps`` steps, checkpointing to ``work`` (and
    resuming from a checkpoint found there); ``on_step(step, loss)`` after each step."""
    model = new_model(recipe, variant)
    opt = optimizer(model, recipe)
    state = TrainState()
    path = work / CHECKPOINT
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["state"])
    model.train()
    last_save = time.monotonic()
    while state.step < recipe.steps:
        started = time.perf_counter()
        lr = learning_rate(recipe, state.step)
        for group in opt.param_groups:
            group["lr"] = lr
        x = batch(recipe, corpus.train, state.step)
        logits = model(x[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.curve.append((state.step, loss.item(), lr))
        state.step += 1
        if state.step % recipe.eval_every == 0 or state.step == recipe.steps:
            val = perplexity(model, corpus.val, recipe.seq_len, max_tokens=recipe.eval_tokens)
            state.val_curve.append((state.step, val.loss))
        state.seconds += time.perf_counter() - started
        on_step(state.step, state.curve[-1][1])
        if time.monotonic() - last_save > CHECKPOINT_SECONDS and state.step < recipe.steps:
            save_checkpoint(path, model, opt, state)
            last_save = time.monotonic()
    model.eval()
    return model, state


def save_checkpoint(path: Path, model: ZooForCausalLM, opt: torch.optim.Optimizer, state: TrainState) -> None:
    payload: dict[str, Any] = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": asdict(state)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def final_train_loss(state: TrainState) -> float:
    tail = [loss for _, loss, _ in state.curve[-LOSS_WINDOW:]]
    return float(np.mean(tail)) if tail else float("nan")
