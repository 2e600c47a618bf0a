"""Matmul FLOP counts per token, for speed targets and model-FLOPs utilisation.

A multiply-add counts as 2 FLOPs; norms, activations and softmax are ignored (they are
a few percent at most). ``context`` is the number of keys each query attends to.
"""

from __future__ import annotations

from typing import Any

from irm.core.config import IRMConfig

GATED_MLP = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo2", "irm_zoo"}


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def host_forward_flops(config: Any, context: int) -> int:
    """Forward FLOPs per token of a decoder-only host, LM head included."""
    linear, attention = _host_parts(config, context)
    return linear + attention


def _host_parts(config: Any, context: int) -> tuple[int, int]:
    """(linear-layer FLOPs, attention-score FLOPs) per token."""
    h = int(_get(config, "hidden_size", "n_embd"))
    layers = int(_get(config, "num_hidden_layers", "n_layer"))
    heads = int(_get(config, "num_attention_heads", "n_head"))
    kv_heads = int(_get(config, "num_key_value_heads", default=heads))
    head_dim = int(_get(config, "head_dim", default=h // heads))
    inner = int(_get(config, "intermediate_size", "n_inner", default=4 * h))
    vocab = int(config.vocab_size)
    q, kv = heads * head_dim, kv_heads * head_dim
    projections = h * q + 2 * h * kv + q * h
    attention = 2 * q * context  # QK^T and AV
    mlp = (3 if config.model_type in GATED_MLP else 2) * h * inner
    return 2 * (layers * (projections + mlp) + h * vocab), layers * 2 * attention


def irm_flops(config: IRMConfig) -> int:
    """Forward FLOPs per token of the IRM."""
    h, w, out = config.hidden_size, config.width, config.hidden_size * config.num_injected
    dims = [h] + [w] * config.depth
    macs = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    macs += dims[-1] * out if config.rank is None else dims[-1] * config.rank + config.rank * out
    return 2 * macs


def training_flops(host_config: Any, irm_config: IRMConfig, context: int, *, head_fraction: float = 1.0) -> int:
    """FLOPs per training token, for model-FLOPs utilisation: the host's forward; its
    backward through activations only (input gradients of every linear = one forward of
    the linears, and twice the attention-score matmuls); the IRM's forward and backward
    (input and weight gradients: three forwards). ``head_fraction``: the share of tokens at
    which the LM head runs, forward and backward (irm's loss runs it only where the next
    token is a target; 1 counts it everywhere)."""
    linear, attention = _host_parts(host_config, context)
    head = 2 * int(_get(host_config, "hidden_size", "n_embd")) * int(host_config.vocab_size)
    return round(2 * (linear - head) + 2 * head * head_fraction + 3 * attention + 3 * irm_flops(irm_config))
