"""irm's own small decoder family for the architecture zoo (``model_type="irm_zoo"``).

Every design choice the zoo varies is one switch of :class:`ZooConfig`, and nothing else
changes with it:

``position``
    ``rope`` (rotary on queries and keys), ``learned`` (a learned absolute position
    embedding added to the token embedding, GPT-2 style) or ``none`` (no positional signal
    but the causal mask).
``norm``
    ``rmsnorm`` or ``layernorm`` (with its bias), for every norm in the model.
``norm_placement``
    ``pre``: ``x + attn(norm(x))``, ``+ mlp(norm(.))`` and a final norm before the LM head;
    ``post`` (the original Transformer's): ``norm(x + attn(x))``, ``norm(. + mlp(.))`` and no
    final norm (the last layer's output is already normalised).
``tie_word_embeddings``
    the LM head shares the token embedding matrix, or has its own.

The rest is fixed: multi-head attention without biases, a SwiGLU MLP, no dropout.

Each layer passes its ``resid_mid`` through an identity module, ``layer.resid_mid``: the
stream the MLP reads and adds to (``x + attn(norm(x))`` pre-norm, ``norm(x + attn(x))``
post-norm). :mod:`irm.core.sites` hooks it there. The classes are registered with
``AutoConfig``/``AutoModel``/``AutoModelForCausalLM`` when this module is imported, so
``save_pretrained``/``from_pretrained`` and ``irm.load_host(folder)`` work as for any
transformers model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

MODEL_TYPE = "irm_zoo"
POSITIONS = ("rope", "learned", "none")
NORMS = ("rmsnorm", "layernorm")
PLACEMENTS = ("pre", "post")


class ZooConfig(PreTrainedConfig):
    """The zoo model's configuration: sizes and the four design switches."""

    model_type = MODEL_TYPE

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256
    position: str = "rope"
    norm: str = "rmsnorm"
    norm_placement: str = "pre"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def __post_init__(self, **kwargs: Any) -> None:
        for name, allowed in (("position", POSITIONS), ("norm", NORMS), ("norm_placement", PLACEMENTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("hidden_size must split into an even head size per attention head")
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def make_norm(config: ZooConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


def rotary_tables(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of shape ``(batch, 1, seq, head_dim)`` for rotating pairs
    ``(i, i + head_dim/2)`` of each head by ``position * theta^(-2i/head_dim)``."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    angles = position_ids.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def attention_mask_4d(attention_mask: Tensor | None, batch: int, queries: int, past: int, device: torch.device) -> Tensor | None:
    """A boolean ``(batch, 1, queries, past + queries)`` mask (True = may attend): causal,
    without padded keys, and every query sees at least itself, so a padding row never
    softmaxes over nothing. ``None`` when plain causal attention is exact (no cache, no padding)."""
    if past == 0 and (attention_mask is None or bool(attention_mask.all())):
        return None
    keys = past + queries
    query_pos = torch.arange(past, keys, device=device)[:, None]
    key_pos = torch.arange(keys, device=device)[None]
    allowed = (key_pos <= query_pos)[None, None].expand(batch, 1, queries, keys)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -keys:].bool()
    return allowed | (key_pos == query_pos)


class ZooAttention(nn.Module):
    def __init__(self, config: ZooConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None, rope: tuple[Tensor, Tensor] | None, cache: Cache | None) -> Tensor:
        batch, seq, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and seq > 1)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))  # type: ignore[no-any-return]


class ZooMLP(nn.Module):
    def __init__(self, config: ZooConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # type: ignore[no-any-return]


class ZooLayer(GradientCheckpointingLayer):
    """One decoder layer; ``attn_norm`` and ``mlp_norm`` normalise the sublayer inputs
    (pre-norm) or the sums (post-norm)."""

    def __init__(self, config: ZooConfig, layer_idx: int) -> None:
        super().__init__()
        self.post_norm = config.norm_placement == "post"
        self.attn_norm = make_norm(config)
        self.attn = ZooAttention(config, layer_idx)
        self.resid_mid = nn.Identity()
        self.mlp_norm = make_norm(config)
        self.mlp = ZooMLP(config)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> Tensor:
        x = hidden_states
        if self.post_norm:
            mid = self.resid_mid(self.attn_norm(x + self.attn(x, attention_mask, position_embeddings, cache)))
            return self.mlp_norm(mid + self.mlp(mid))  # type: ignore[no-any-return]
        mid = self.resid_mid(x + self.attn(self.attn_norm(x), attention_mask, position_embeddings, cache))
        return mid + self.mlp(self.mlp_norm(mid))  # type: ignore[no-any-return]


class ZooPreTrainedModel(PreTrainedModel):
    config_class = ZooConfig
    config: ZooConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ZooLayer"]
    _supports_sdpa = True


class ZooModel(ZooPreTrainedModel):
    """The decoder stack: embeddings, layers and (pre-norm) the final norm."""

    def __init__(self, config: ZooConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size) if config.position == "learned" else None
        self.layers = nn.ModuleList(ZooLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config) if config.norm_placement == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        assert isinstance(value, nn.Embedding)
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        batch, seq = hidden.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(past, past + seq, device=hidden.device)[None].expand(batch, seq)
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids)
        rope = None
        if self.config.position == "rope":
            rope = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        mask = attention_mask_4d(attention_mask, batch, seq, past, hidden.device)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, cache=cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), cache=cache if use_cache else None)  # type: ignore[call-arg]


class ZooForCausalLM(ZooPreTrainedModel, GenerationMixin):
    """The decoder stack and its LM head (tied to the token embedding when the config says so)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ZooConfig) -> None:
        super().__init__(config)
        self.model = ZooModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        assert isinstance(value, nn.Linear)
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)  # type: ignore[call-arg]


AutoConfig.register(MODEL_TYPE, ZooConfig, exist_ok=True)
AutoModel.register(ZooConfig, ZooModel, exist_ok=True)
AutoModelForCausalLM.register(ZooConfig, ZooForCausalLM, exist_ok=True)
