"""The zoo's pre-training text, its held-out split and its tokenizer: the same for every
zoo model.

Two offline sources, both installed from package registries:

``wordnet``
    every gloss of Debian's ``wordnet-base`` (WordNet 3.0, ``/usr/share/wordnet/data.*``;
    another folder with ``$IRM_WORDNET``), as ``lemma: definition; "example"``: about
    117,000 short documents of plain English, 9 MB;
``chatterbot``
    chatterbot-corpus's English question/answer pairs (already a dependency of irm), in
    the prompt format irm uses for hosts without a chat template (``Question: ...\\nAnswer:
    ...``), so that a zoo host has seen the format ``irm study`` prompts it with.

Documents are split into training and validation sets by document, with a fixed seed.
The tokenizer is a byte-level BPE trained on the training documents only with the
``tokenizers`` library: a small vocabulary (4,096 by default) keeps the embedding and the
softmax, which dominate a model this small, cheap; byte level means no text is ever
out of vocabulary.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from irm.core.io import atomic_write, atomic_write_all
from irm.data.prompts import PLAIN_TEMPLATE
from irm.data.sources import chatterbot_pairs
from irm.errors import DataError

SPECIALS = ("<pad>", "<s>", "</s>")
PAD, BOS, EOS = 0, 1, 2
WORDNET_DEFAULT = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective position markers: beautiful(a)


@dataclass(frozen=True)
class CorpusRecipe:
    """What decides the corpus, split and tokenizer (part of a zoo's recipe)."""

    vocab_size: int = 4096
    val_fraction: float = 0.02
    max_documents: int | None = None
    """Use only this many documents (a seeded sample), for micro builds."""
    seed: int = 0


def wordnet_dir() -> Path:
    return Path(os.environ.get("IRM_WORDNET") or WORDNET_DEFAULT)


def wordnet_documents(folder: Path | None = None) -> list[str]:
    """``lemma: gloss`` for every synset of WordNet's four data files."""
    folder = folder or wordnet_dir()
    missing = [name for name in WORDNET_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"the zoo corpus needs WordNet's glosses, and {folder} lacks {', '.join(missing)}",
            hint="install Debian's wordnet-base (apt-get install wordnet-base, or `make wordnet`), or point $IRM_WORDNET at a WordNet 3.0 dict folder",
        )
    docs = []
    for name in WORDNET_FILES:
        for line in (folder / name).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:  # the licence header
                continue
            head, gloss = line.split(" | ", 1)
            lemma = _MARKER.sub("", head.split()[4]).replace("_", " ")
            docs.append(f"{lemma}: {gloss.strip()}")
    return docs


def chatterbot_documents() -> list[str]:
    return [PLAIN_TEMPLATE.format(question=row.question) + " " + (row.answer or "") for row in chatterbot_pairs()]


@dataclass
class Corpus:
    """The tokenised corpus: token streams (``BOS doc EOS`` after one another) and the tokenizer."""

    tokenizer: PreTrainedTokenizerFast
    train: np.ndarray
    val: np.ndarray
    info: dict[str, object]


def build_corpus(recipe: CorpusRecipe, folder: Path, log: Callable[[str], None] = lambda _: None) -> Corpus:
    """The corpus for ``recipe``, cached in ``folder`` (built there on the first call)."""
    info_path = folder / "corpus.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("recipe") == asdict(recipe):
            return _load(folder, info)
    log("building the corpus and training its tokenizer")
    wordnet, chatter = wordnet_documents(), chatterbot_documents()
    docs = [d for d in wordnet + chatter if d.strip()]
    rng = random.Random(recipe.seed)
    rng.shuffle(docs)
    if recipe.max_documents is not None:
        docs = docs[: recipe.max_documents]
    n_val = max(1, round(len(docs) * recipe.val_fraction))
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    tokenizer = train_tokenizer(train_docs, recipe.vocab_size)
    train, val = encode(tokenizer, train_docs), encode(tokenizer, val_docs)
    digest = hashlib.sha256("\x00".join(docs).encode()).hexdigest()[:16]
    info = {
        "recipe": asdict(recipe),
        "sources": {"wordnet": f"{len(wordnet)} glosses from {wordnet_dir()}", "chatterbot": f"{len(chatter)} question/answer pairs"},
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "tokens": {"train": int(len(train)), "val": int(len(val))},
        "text_sha256": digest,
    }
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    atomic_write_all(
        [
            (folder / "train.npy", npy_bytes(train)),
            (folder / "val.npy", npy_bytes(val)),
        ]
    )
    atomic_write(info_path, (json.dumps(info, indent=2) + "\n").encode())
    return Corpus(tokenizer, train, val, info)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _load(folder: Path, info: dict[str, object]) -> Corpus:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer"))
    train = np.load(folder / "train.npy", allow_pickle=False)
    val = np.load(folder / "val.npy", allow_pickle=False)
    return Corpus(tokenizer, train, val, info)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with ids 0-2 for ``<pad> <s> </s>``."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,  # type: ignore[no-untyped-call]
        pad_token=SPECIALS[PAD],
        bos_token=SPECIALS[BOS],
        eos_token=SPECIALS[EOS],
    )


def encode(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> np.ndarray:
    """One stream: ``BOS doc EOS`` for each document, as ``uint16``."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    parts = [np.asarray([BOS, *row, EOS], dtype=np.uint16) for row in ids]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
