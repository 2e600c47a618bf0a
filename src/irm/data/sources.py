"""Neutral question/answer sources that install from the package registries."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from irm.data.rows import Row, read_rows
from irm.errors import DataError

SOURCES = {"chatterbot": "chatterbot-corpus 1.3.3 (BSD-3-Clause), English conversations: first line = question, second = answer"}


def chatterbot_pairs() -> list[Row]:
    """Question/answer pairs from chatterbot-corpus's English conversations, de-duplicated
    by answer, without one-word answers."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("builtin:chatterbot needs the chatterbot-corpus package", hint="pip install chatterbot-corpus")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "english"
    rows: list[Row] = []
    seen: set[str] = set()
    for path in sorted(root.glob("*.yml")):
        for conv in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []) or []:
            if len(conv) < 2 or not all(isinstance(x, str) for x in conv[:2]):
                continue
            question, answer = conv[0].strip(), conv[1].strip()
            key = re.sub(r"\W+", " ", answer.lower()).strip()
            if len(answer.split()) < 2 or key in seen or not question:
                continue
            seen.add(key)
            rows.append(Row(line=len(rows) + 1, question=question, answer=answer))
    return rows


def load_source(source: str) -> list[Row]:
    """``builtin:chatterbot`` or any data file with question/answer columns."""
    if source == "builtin:chatterbot":
        return chatterbot_pairs()
    rows = read_rows(source)
    if any(r.question is None for r in rows):
        raise DataError(f"{source}: a synthesis source needs question and answer columns", hint="rename the columns")
    return rows
