"""Random-weight hosts of every supported architecture, for fast tests and benchmarks.

They use a byte-level tokenizer built in memory (256 bytes + 3 specials), so they need no
files at all. Weights are drawn from a fixed seed: the same name gives the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SPECIALS = ("<pad>", "<s>", "</s>")
BYTE_VOCAB = len(SPECIALS) + 256
TINY_SEED = 1234


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A lossless byte-level tokenizer with ids 0-2 for ``<pad> <s> </s>``."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,  # type: ignore[no-untyped-call]
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def _common() -> dict[str, Any]:
    return dict(vocab_size=BYTE_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def _llama(layers: int = 4) -> PretrainedConfig:
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **_common(),
    )


TINY_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "tiny-random-llama": _llama,
    "tiny-random-mistral": lambda: MistralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=None,
        **_common(),
    ),
    "tiny-random-qwen2": lambda: Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **_common(),
    ),
    "tiny-random-gemma3": lambda: Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=16,
        **_common(),
    ),
    "tiny-random-gpt2": lambda: GPT2Config(
        n_embd=64,
        n_layer=4,
        n_head=4,
        n_positions=512,
        **_common(),
    ),
    "tiny-random-gpt-neox": lambda: GPTNeoXConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=512,
        **_common(),
    ),
}


def build_tiny(
    name: str, dtype: torch.dtype = torch.float32, seed: int = TINY_SEED, config: PretrainedConfig | None = None
) -> PreTrainedModel:
    """Build a random-weight model for a ``tiny-random-*`` name (or an explicit config)."""
    config = config if config is not None else TINY_CONFIGS[name]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]
    assert isinstance(model, PreTrainedModel)
    return model
