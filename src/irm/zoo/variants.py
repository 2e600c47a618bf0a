"""The zoo's base design, its one-choice variants and the training recipes.

The base is a small Llama-style decoder (RoPE, pre-norm RMSNorm, tied LM head, as
SmolLM2); each variant changes exactly one :class:`~irm.zoo.modeling.ZooConfig` switch.
A zoo host is named ``zoo-<positions>-<norm>-<head>``, e.g. ``zoo-rope-rmsnorm-tied``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from irm.errors import IRMError
from irm.zoo.corpus import CorpusRecipe
from irm.zoo.modeling import ZooConfig

ZOO_PREFIX = "zoo-"


@dataclass(frozen=True)
class Variant:
    key: str
    change: str
    """The one design choice that differs from the base (RoPE, pre-norm RMSNorm, tied
    head), in a few words."""
    position: str = "rope"
    norm: str = "rmsnorm"
    norm_placement: str = "pre"
    tied: bool = True

    @property
    def name(self) -> str:
        norm = "postnorm" if self.norm_placement == "post" else self.norm
        return f"{ZOO_PREFIX}{'nope' if self.position == 'none' else self.position}-{norm}-{'tied' if self.tied else 'untied'}"

    def switches(self) -> dict[str, Any]:
        return {"position": self.position, "norm": self.norm, "norm_placement": self.norm_placement, "tie_word_embeddings": self.tied}


VARIANTS: tuple[Variant, ...] = (
    Variant("base", "nothing (the base)"),
    Variant("learned", "learned absolute positions", position="learned"),
    Variant("nope", "no positions", position="none"),
    Variant("layernorm", "LayerNorm", norm="layernorm"),
    Variant("postnorm", "post-norm", norm_placement="post"),
    Variant("untied", "untied head", tied=False),
)


def variant_names() -> list[str]:
    return [v.name for v in VARIANTS]


def find_variant(name: str) -> Variant:
    """A variant by key (``postnorm``) or host name (``zoo-rope-postnorm-tied``)."""
    for v in VARIANTS:
        if name in (v.key, v.name, v.name.removeprefix(ZOO_PREFIX)):
            return v
    raise IRMError(
        f"unknown zoo variant {name!r}",
        hint="choose from " + ", ".join(f"{v.key} ({v.name})" for v in VARIANTS),
    )


@dataclass(frozen=True)
class Recipe:
    """Everything but the variant that decides a zoo model: sizes, corpus and training
    budget. Every variant of a zoo is trained with the same recipe, on the same batches."""

    name: str
    hidden_size: int = 256
    intermediate_size: int = 704
    num_layers: int = 4
    num_heads: int = 4
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 200
    lr: float = 2e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 40
    eval_tokens: int = 16384
    """Validation tokens used for the train curve's intermediate points (the final
    perplexity uses the whole validation set)."""
    corpus: CorpusRecipe = field(default_factory=CorpusRecipe)

    def model_config(self, variant: Variant) -> ZooConfig:
        return ZooConfig(
            vocab_size=self.corpus.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            max_position_embeddings=self.seq_len,
            **variant.switches(),
        )

    def with_steps(self, steps: int | None) -> Recipe:
        if steps is None or steps == self.steps:
            return self
        return replace(self, name=f"{self.name}-steps{steps}", steps=steps, warmup_steps=min(self.warmup_steps, max(1, steps // 10)))

    def with_seed(self, seed: int | None) -> Recipe:
        """Another initialisation and batch order on the same corpus and tokenizer (to see
        how much of a difference between variants is seed noise)."""
        if seed is None or seed == self.seed:
            return self
        return replace(self, name=f"{self.name}-seed{seed}", seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "standard": Recipe("standard"),
    "micro": Recipe(
        "micro",
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        seq_len=64,
        batch_size=4,
        steps=6,
        lr=3e-3,
        warmup_steps=2,
        eval_every=3,
        eval_tokens=256,
        corpus=CorpusRecipe(vocab_size=300, max_documents=1500),
    ),
}
