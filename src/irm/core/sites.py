"""Where the decoder layers and the residual-stream points live in each supported host.

Nothing here copies or patches modeling code: an :class:`ArchitectureSpec` only names
submodules of the unmodified transformers model, so that :mod:`irm.attach` can put hooks
on them.

The three injection sites, for a pre-norm decoder layer ``x -> x + attn(...) -> ... + mlp(...)``:

``resid_pre``
    the layer's input hidden state (a forward pre-hook on the layer);
``resid_mid``
    after the attention branch has been added to the residual and before the MLP reads it
    (the paper's point; a forward hook on the module whose output is the attention branch,
    so that ``x + branch + v`` is what the MLP and the rest of the stack see);
``resid_post``
    the layer's output (a forward hook on the layer).

For GPT-NeoX with ``use_parallel_residual`` (Pythia's default) the MLP reads the layer
input, not ``x + attn``: there, ``resid_mid`` adds the vector next to the attention branch
and the MLP of that same layer does not see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from irm.errors import HostError

Site = Literal["resid_pre", "resid_mid", "resid_post"]
SITES: tuple[Site, ...] = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True)
class ArchitectureSpec:
    """Names of the submodules that hooks attach to, for one family of hosts."""

    family: str
    model_types: tuple[str, ...]
    layers_attr: str
    """Attribute of ``model.base_model`` holding the ``nn.ModuleList`` of decoder layers."""
    attention_branch: str
    """Submodule of a decoder layer whose output is exactly what is added to the residual
    stream after attention (after any post-attention norm or dropout)."""

    def decoder_stack(self, model: nn.Module) -> nn.Module:
        return model.base_model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return getattr(self.decoder_stack(model), self.layers_attr)

    def branch_module(self, layer: nn.Module) -> nn.Module:
        module = layer
        for name in self.attention_branch.split("."):
            module = getattr(module, name)
        return module


_LLAMA_LIKE = ArchitectureSpec(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"),
    layers_attr="layers",
    attention_branch="self_attn",
)
# Gemma 2/3 and OLMo 2 normalise the attention output before the residual add.
_POST_NORMED = ArchitectureSpec(
    family="gemma2",
    model_types=("gemma2", "gemma3", "gemma3_text", "olmo2"),
    layers_attr="layers",
    attention_branch="post_attention_layernorm",
)
_GPT2 = ArchitectureSpec(
    family="gpt2",
    model_types=("gpt2",),
    layers_attr="h",
    attention_branch="attn",
)
_GPT_NEOX = ArchitectureSpec(
    family="gpt_neox",
    model_types=("gpt_neox",),
    layers_attr="layers",
    attention_branch="post_attention_dropout",
)

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (_LLAMA_LIKE, _POST_NORMED, _GPT2, _GPT_NEOX)


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


def resolve_architecture(model: nn.Module) -> ArchitectureSpec:
    """The spec for ``model``, or a :class:`HostError` naming its class and what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise HostError(
        f"unsupported architecture {type(model).__name__} (model_type={model_type!r})",
        hint="irm supports decoder-only models of type " + ", ".join(supported_model_types()),
    )
