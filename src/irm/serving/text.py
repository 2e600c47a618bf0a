"""Token ids to text, a token at a time: what a stream may show so far, and stop strings.

The text is always the decoding of all ids so far (so it ends exactly as a one-shot decode
would). A stream holds back what could still change: a trailing replacement character (an
unfinished UTF-8 sequence) and a tail that could be the start of a stop string. A stop
string ends the text where it begins and is not part of it, as in OpenAI's API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

INCOMPLETE = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.shown = 0
        """Characters of :attr:`text` already handed out."""
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that can be shown now (sets :attr:`stopped` when a
        stop string appeared, after which nothing more is shown)."""
        self.ids.append(token_id)
        self.text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        cut = self._stop_at()
        if cut is not None:
            self.text = self.text[:cut]
            self.stopped = True
            return self._show(len(self.text))
        end = len(self.text)
        if self.text.endswith(INCOMPLETE):
            end -= 1
        end -= self._stop_prefix(self.text[:end])
        return self._show(max(end, self.shown))

    def finish(self) -> str:
        """The rest of the text, held back until now."""
        return self._show(len(self.text))

    def _show(self, end: int) -> str:
        new = self.text[self.shown : end]
        self.shown = max(self.shown, end)
        return new

    def _stop_at(self) -> int | None:
        # a stop string can only end in text not yet shown (or in its held-back tail)
        start = max(0, self.shown - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest tail of ``text`` that begins some stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest
