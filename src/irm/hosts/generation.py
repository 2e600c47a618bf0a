"""Text generation with the host's chat template, left-padded batches and a seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchEncoding

from irm.data.prompts import prompt_ids, prompt_text
from irm.hosts.loading import Host


def format_prompt(host: Host, prompt: str, *, chat: bool = True) -> str:
    """The prompt as the host expects it: its chat template when it has one (and ``chat``),
    else ``Question: ...\\nAnswer:`` (see :mod:`irm.data.prompts`, the one formatter
    shared with training)."""
    return prompt_text(host.require_tokenizer(), prompt, chat=chat)


def encode_prompts(host: Host, prompts: Sequence[str], *, chat: bool = True) -> BatchEncoding:
    """Tokenise a batch, left-padded so that every row ends at its last prompt token. Each
    row holds exactly the ids a training row's prompt part has for the same question
    (:func:`irm.data.prompts.prompt_ids`, BOS included once)."""
    tok = host.require_tokenizer()
    rows = [{"input_ids": prompt_ids(tok, p, chat=chat)} for p in prompts]
    previous = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok.pad(rows, padding=True, return_tensors="pt", return_attention_mask=True)
    finally:
        tok.padding_side = previous
    encoded: BatchEncoding = enc.to(host.device)
    return encoded


@dataclass
class Generation:
    prompt: str
    text: str
    token_ids: list[int]


@torch.no_grad()
def generate(
    host: Host,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    greedy: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int | None = 0,
    chat: bool = True,
    batch_size: int = 16,
    **generate_kwargs: Any,
) -> list[Generation]:
    """Generate one continuation per prompt with whatever hooks are attached to ``host``."""
    results: list[Generation] = []
    tok = host.require_tokenizer()
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        enc = encode_prompts(host, chunk, chat=chat)
        if seed is not None:
            torch.manual_seed(seed + start)
        sampling: dict[str, Any] = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_p": top_p}
        out = host.model.generate(  # type: ignore[operator]
            **enc,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            **sampling,
            **generate_kwargs,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        for prompt, row in zip(chunk, new):
            ids = row.tolist()
            if tok.eos_token_id is not None and tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id)]
            ids = [i for i in ids if i != tok.pad_token_id]
            results.append(Generation(prompt=prompt, text=str(tok.decode(ids, skip_special_tokens=True)).strip(), token_ids=ids))
    return results
