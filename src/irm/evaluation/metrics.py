"""Evaluation metrics: diversity and repetition of texts, bootstrap intervals, and the
host-based fluency and drift measures.

Texts are split into *words* by :func:`words` (lower-cased runs of letters/digits, and
each punctuation mark on its own), so the text metrics do not depend on any tokenizer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from irm.core.attach import attach, is_attached
from irm.errors import IRMError

if TYPE_CHECKING:
    from irm.hosts.loading import Host

_WORD = re.compile(r"\w+|[^\w\s]")


class Estimate(NamedTuple):
    """A mean with its bootstrap confidence interval ``[lo, hi]``."""

    mean: float
    lo: float
    hi: float


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n over a corpus (Li et al., 2016): the number of different word n-grams
    divided by the number of word n-grams in all ``texts`` together; 0 when there are none.
    1 means no n-gram occurs twice anywhere; low values mean repetitive or uniform texts."""
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of a text's word n-grams that repeat an n-gram seen earlier *in the same text*
    (seq-rep-n, Welleck et al., 2019): ``1 - distinct / total``. 0 for a text without
    repeats or with fewer than ``n`` words; close to 1 for a text stuck in a loop."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def bootstrap_ci(
    values: Sequence[Any],
    *,
    statistic: Callable[[list[Any]], float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> Estimate:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs left out), or of
    ``statistic(values)`` for a statistic of the whole sample (e.g. distinct-n of a list
    of texts). Resampling with replacement duplicates items, which biases such a statistic
    (duplicated texts lower distinct-n), so its replicates are first shifted by their bias
    (their mean minus the estimate), and the interval is clipped to ``bounds`` if given.
    An empty sample gives NaNs."""
    if statistic is None:
        data = np.asarray(values, dtype=np.float64)
        data = data[~np.isnan(data)]
        if data.size == 0:
            return Estimate(math.nan, math.nan, math.nan)
        rng = np.random.default_rng(seed)
        boots = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
        point = float(data.mean())
    else:
        items = list(values)
        if not items:
            return Estimate(math.nan, math.nan, math.nan)
        rng = np.random.default_rng(seed)
        boots = np.array([statistic([items[i] for i in rng.integers(0, len(items), len(items))]) for _ in range(n_boot)])
        point = float(statistic(items))
        boots += point - boots.mean()
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(boots, [tail, 100 - tail])
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Estimate(point, float(lo), float(hi))


# ---------------------------------------------------------------- host-based metrics
def _check_bare(host: Host) -> None:
    """Refuse a host with an IRM or steering vector attached."""
    if is_attached(host):
        raise IRMError(
            "an IRM or steering vector is attached to the host, so it is not the bare host",
            hint="compute perplexity outside `with irm.attach(...)`",
        )


def prompt_ids(host: Any, prompts: Sequence[str], *, chat: bool = True) -> list[list[int]]:
    """Token ids of each formatted prompt, exactly as :func:`irm.generate` feeds them."""
    from irm.hosts.generation import encode_prompts

    enc = encode_prompts(host, prompts, chat=chat)
    return [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]


def _right_padded(host: Any, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Right padding: every row starts at position 0, as when it is run alone."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), host.require_tokenizer().pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids.to(host.device), "attention_mask": mask.to(host.device)}


@torch.no_grad()
def continuation_perplexity(
    host: Any,
    prompts: Sequence[str],
    continuations: Sequence[Sequence[int]],
    *,
    chat: bool = True,
    batch_size: int = 8,
) -> list[float]:
    """Perplexity of each continuation (token ids, as in :class:`irm.Generation`) under the
    bare host, given its formatted prompt: ``exp(mean NLL of the continuation tokens)``;
    the prompt tokens are context only. NaN for an empty continuation. Refuses a host
    with hooks attached."""
    if len(prompts) != len(continuations):
        raise IRMError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    _check_bare(host)
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        heads = prompt_ids(host, prompts[start : start + batch_size], chat=chat)
        tails = [list(c) for c in continuations[start : start + batch_size]]
        batch = _right_padded(host, [h + t for h, t in zip(heads, tails)])
        logprobs = torch.log_softmax(host.model(**batch).logits.float(), dim=-1)
        for i, (head, tail) in enumerate(zip(heads, tails)):
            if not tail:
                out.append(math.nan)
                continue
            # position t predicts token t + 1
            positions = torch.arange(len(head) - 1, len(head) + len(tail) - 1, device=logprobs.device)
            targets = torch.tensor(tail, device=logprobs.device)
            nll = -logprobs[i, positions, targets].mean().item()
            out.append(math.exp(nll))
    return out


@torch.no_grad()
def prompt_kl(
    host: Any,
    adapter: torch.nn.Module,
    prompts: Sequence[str],
    *,
    strength: float = 1.0,
    chat: bool = True,
    batch_size: int = 8,
) -> list[float]:
    """Drift of each prompt: ``KL(P_adapter || P_host)`` in nats, between the next-token
    distribution with ``adapter`` attached at ``strength`` and the bare host's, averaged
    over every position of the formatted prompt."""
    _check_bare(host)
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        rows = prompt_ids(host, prompts[start : start + batch_size], chat=chat)
        batch = _right_padded(host, rows)
        bare = torch.log_softmax(host.model(**batch).logits.float(), dim=-1)
        with attach(host, adapter, strength=strength):
            steered = torch.log_softmax(host.model(**batch).logits.float(), dim=-1)
        kl = (steered.exp() * (steered - bare)).sum(-1)
        mask = batch["attention_mask"].bool()
        out += [kl[i][mask[i]].mean().item() for i in range(len(rows))]
    return out
