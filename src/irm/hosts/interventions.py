"""Edits of a loaded host's LM head and residual basis, made on the unmodified transformers
modules (their weights are replaced; no modeling code changes). They ask whether what an
IRM learns follows the host's LM head, its residual basis, or neither:

``untie``
    a tied LM head gets its own copy of the embedding matrix (the function is unchanged; the
    head is no longer the embedding). Refused for a host whose head is already untied.
``fold-norm``
    the final norm's gains are set to 1 and folded into the LM head's columns (a
    LayerNorm's bias becomes a bias of the head): function-preserving up to rounding. A tied
    head is untied first, so that the embedding stays as it was.
``permute:SEED``
    the residual stream's indices are permuted by a fixed random permutation ``p``
    (``x' = x[p]``): the embedding's and the LM head's columns, every norm's gains on the
    residual, every projection that reads it (columns) and every projection that writes it
    (rows and biases). Function-preserving up to rounding; residual index ``p[j]`` of the
    original host is index ``j`` of the edited one (:func:`residual_permutation`).

``load_host(name, edit=...)`` applies one; the edit is part of :class:`irm.HostIdentity`, so
an IRM trained on an edited host only loads on the same edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from irm.core.sites import resolve_architecture
from irm.errors import HostError, IRMError

HOST_EDITS = ("none", "untie", "fold-norm", "permute:SEED")
HOST_EDIT_HELP = (
    "Edit the host before use: none, untie (own copy of a tied LM head), fold-norm (final-norm gains set to 1, "
    "folded into the LM head) or permute:SEED (permute the residual basis, head and every layer with it). "
    "The last two keep the host's function."
)
_READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")
_PERMUTABLE_FAMILIES = ("llama", "gemma2")


@dataclass(frozen=True)
class HostEdit:
    kind: str
    """``""`` (none), ``untie``, ``fold-norm`` or ``permute``."""
    seed: int | None = None

    @property
    def name(self) -> str:
        """The canonical text (``""`` for no edit), as stored in :class:`irm.HostIdentity`."""
        return f"{self.kind}:{self.seed}" if self.kind == "permute" else self.kind


def parse_host_edit(text: object) -> HostEdit:
    """``none``/``""``, ``untie``, ``fold-norm`` or ``permute:SEED``."""
    value = str(text).strip().lower() if isinstance(text, str) else None
    if value in ("", "none"):
        return HostEdit("")
    if value in ("untie", "fold-norm"):
        return HostEdit(value)
    if value is not None and value.startswith("permute:"):
        seed = value.removeprefix("permute:")
        if seed.isdigit():
            return HostEdit("permute", int(seed))
    raise IRMError(f"unknown host edit {text!r}", hint="use one of " + ", ".join(HOST_EDITS) + " (e.g. permute:1)")


def apply_host_edit(model: nn.Module, edit: str | HostEdit) -> HostEdit:
    """Edit ``model`` in place (under ``torch.no_grad``); returns the parsed edit."""
    parsed = edit if isinstance(edit, HostEdit) else parse_host_edit(edit)
    with torch.no_grad():
        if parsed.kind == "untie":
            if not is_tied(model):
                raise HostError(
                    f"{type(model).__name__}'s LM head is not tied to its embedding, so there is nothing to untie",
                    hint="use --host-edit untie only on hosts with tied embeddings (e.g. SmolLM2)",
                )
            untie(model)
        elif parsed.kind == "fold-norm":
            fold_final_norm(model)
        elif parsed.kind == "permute":
            assert parsed.seed is not None
            permute_residual(model, residual_permutation(parsed.seed, _hidden_size(model)))
    return parsed


def _hidden_size(model: nn.Module) -> int:
    config: Any = getattr(model, "config", None)
    return int(config.hidden_size)


def lm_head(model: nn.Module) -> nn.Linear:
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        raise HostError(f"{type(model).__name__} has no linear LM head", hint="host edits need a model with an LM head")
    return head


def embedding(model: nn.Module) -> nn.Embedding:
    emb = model.get_input_embeddings()  # type: ignore[operator]
    assert isinstance(emb, nn.Embedding)
    return emb


def is_tied(model: nn.Module) -> bool:
    """True when the LM head's weight is the embedding's tensor."""
    return lm_head(model).weight is embedding(model).weight


def untie(model: nn.Module) -> None:
    """Give a tied LM head its own copy of the embedding weights."""
    head = lm_head(model)
    if is_tied(model):
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        config: Any = getattr(model, "config", None)
        config.tie_word_embeddings = False
        text_config = getattr(config, "get_text_config", None)
        if callable(text_config):
            text_config().tie_word_embeddings = False


def final_norm(model: nn.Module) -> nn.Module | None:
    """The last norm module directly under the decoder stack (``norm``, ``ln_f``,
    ``final_layer_norm``), or None."""
    stack = resolve_architecture(model).decoder_stack(model)
    norms = [m for _, m in stack.named_children() if "norm" in type(m).__name__.lower()]
    return norms[-1] if norms else None


def gain_offset(norm: nn.Module) -> float:
    """1 for Gemma-style norms, which scale by ``1 + weight``; else 0."""
    return 1.0 if type(norm).__name__.startswith("Gemma") else 0.0


def fold_final_norm(model: nn.Module) -> None:
    """Set the final norm's gains to 1 (and a LayerNorm's bias to 0) and fold them into the
    LM head: ``W' = W diag(g)``, ``b' = b + W beta``."""
    norm = final_norm(model)
    weight = getattr(norm, "weight", None)
    if norm is None or not isinstance(weight, torch.Tensor):
        raise HostError(f"{type(model).__name__} has no final norm with gains to fold", hint="use another --host-edit")
    untie(model)
    head = lm_head(model)
    offset = gain_offset(norm)
    gain = weight.detach().double() + offset
    original = head.weight.detach().double()
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        shift = original @ bias.detach().double()
        if head.bias is None:
            head.bias = nn.Parameter(
                torch.zeros(head.out_features, dtype=head.weight.dtype, device=head.weight.device), requires_grad=False
            )
        head.bias.copy_(head.bias.double() + shift)
        bias.zero_()
    head.weight.copy_(original * gain[None, :])
    weight.fill_(1.0 - offset)


def residual_permutation(seed: int, size: int) -> np.ndarray:
    """The permutation ``p`` of ``permute:SEED``: index ``j`` of the edited host is index
    ``p[j]`` of the original."""
    return np.random.default_rng([seed, 2]).permutation(size)


def _module(root: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        child = getattr(root, name, None)
        if not isinstance(child, nn.Module):
            return None
        root = child
    return root


def permute_residual(model: nn.Module, perm: np.ndarray) -> None:
    """Relabel the residual stream's indices: ``x' = x[perm]`` everywhere."""
    spec = resolve_architecture(model)
    if spec.family not in _PERMUTABLE_FAMILIES:
        raise HostError(
            f"permute is implemented for Llama-, Mistral-, Qwen- and Gemma-style hosts, not {type(model).__name__}",
            hint="use fold-norm or untie on this host",
        )
    hidden = _hidden_size(model)
    p = torch.as_tensor(perm, dtype=torch.long)
    tied = is_tied(model)
    emb = embedding(model)
    emb.weight.copy_(emb.weight[:, p.to(emb.weight.device)])
    if not tied:
        head = lm_head(model)
        head.weight.copy_(head.weight[:, p.to(head.weight.device)])
    gains = [final_norm(model)]
    for layer in spec.layers(model):
        gains += [m for name, m in layer.named_children() if "norm" in name]
        for path in _READERS + _WRITERS:
            linear = _module(layer, path)
            if linear is None:
                raise HostError(f"{type(layer).__name__} has no {path}", hint="permute needs the usual Llama-style projections")
            assert isinstance(linear, nn.Linear)
            q = p.to(linear.weight.device)
            if path in _READERS:
                linear.weight.copy_(linear.weight[:, q])
            else:
                linear.weight.copy_(linear.weight[q, :])
                if linear.bias is not None:
                    linear.bias.copy_(linear.bias[q])
    for norm in gains:
        for name in ("weight", "bias"):
            value = getattr(norm, name, None)
            if isinstance(value, torch.Tensor) and value.shape == (hidden,):
                value.copy_(value[p.to(value.device)])
