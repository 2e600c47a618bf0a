"""The training loss: summed next-token NLL over answer tokens, with a chunked
cross-entropy for a frozen LM head. Plain torch (no Lightning), so analysis code and
benchmarks can use it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from irm.data.rows import IGNORE_INDEX


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
