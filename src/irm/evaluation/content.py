"""Content words, and how much of one text's content another keeps.

*Content words* are what a text is about, without its tone or grammar:

1. the text is lower-cased and folded to ASCII (``café`` -> ``cafe``);
2. it is split into words of letters and digits (an apostrophe's suffix, as in ``plant's``
   or ``don't``, is dropped with it);
3. English stop words (scikit-learn's list of 318: ``the``, ``about``, ``would`` ...) and
   words shorter than 3 characters are removed, except numbers (``42``, ``1969``), which
   carry facts;
4. each word is reduced to its Snowball (Porter 2) stem, so ``plants`` / ``plant`` and
   ``organises`` / ``organise`` count as the same word.

:func:`content_kept` is the share of a reference text's content words that reappear in
another text. ``irm evaluate`` uses it with the host's own answer as the reference (the
"content kept" of a steered answer), the data builder with the neutral answer a toned
row was made from (its ``facts_kept``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from functools import cache
from typing import Any

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@cache
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@cache
def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def content_words(text: str) -> set[str]:
    """The stems of ``text``'s content words (see the module docstring)."""
    folded = unicodedata.normalize("NFKD", text.lower().replace("\u2019", "'")).encode("ascii", "ignore").decode("ascii")
    stop = _stop_words()
    kept = []
    for match in _WORD.findall(folded):
        word = match.split("'", 1)[0]
        if word in stop or (len(word) < 3 and not word.isdigit()):
            continue
        kept.append(word)
    return set(_stemmer().stemWords(kept))


def content_kept(reference: str, text: str, *, if_empty: float = math.nan) -> float:
    """Share of ``reference``'s content words found in ``text``: 1 when ``text`` keeps them
    all (whatever it adds around them), 0 when it keeps none. ``if_empty`` when the
    reference has no content words (NaN by default: nothing to keep, no measurement)."""
    words = content_words(reference)
    if not words:
        return if_empty
    return len(words & content_words(text)) / len(words)
