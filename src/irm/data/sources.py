"""Neutral question/answer sources that install from the package registries."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from irm.data.rows import Row, read_rows
from irm.errors import DataError

SOURCES = {
    "chatterbot": "chatterbot-corpus 1.3.3 (BSD-3-Clause), English conversations: first line = question, second = answer",
    "wordnet": "WordNet 3.0 (WordNet 3.0 licence) from Debian's wordnet-base: 'What is a NOUN?' -> its gloss and example",
    "python-stdlib": "the docstrings of Python's standard library (PSF-2.0): 'What does json.dumps() do?' -> its first sentence",
}
WORDNET_DIR = Path("/usr/share/wordnet")
"""Where Debian's ``wordnet-base`` puts the WordNet 3.0 database files."""
WORDNET_INSTALL = "sudo apt-get install wordnet-base"
_WORDNET_SKIPPED_FILES = {"12"}
"""Lexicographer files left out: 12 = noun.feeling (emotions are not neutral facts)."""
_NOT_NEUTRAL = re.compile(r"offensive|slur|vulgar|obscene|disparag|derogat|insult|contempt|abusive", re.I)
_DETERMINER = re.compile(r"^(a|an|the|any|one) ", re.I)


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


def wordnet_pairs(root: Path = WORDNET_DIR) -> list[Row]:
    """Factual neutral pairs from WordNet 3.0's nouns: "What is a lighthouse?" -> "A lighthouse
    is a tower with a light that gives warning of shoals to passing ships." (+ the synset's
    first example sentence, when it has one).

    One row per common noun (tagged at least once in WordNet's sense-tagged corpus), for its
    most frequent sense, when that sense's gloss starts with a determiner (so that "X is
    GLOSS" is a sentence) and is 4-30 words long. Proper nouns, multi-word or non-alphabetic
    lemmas, the emotion words (lexicographer file noun.feeling) and glosses marked
    offensive, vulgar or disparaging are left out."""
    index, data = root / "index.noun", root / "data.noun"
    if not (index.is_file() and data.is_file()):
        raise DataError(
            f"builtin:wordnet needs the WordNet 3.0 database from Debian's wordnet-base ({index} not found)",
            hint=WORDNET_INSTALL,
        )
    first_sense: dict[int, str] = {}
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" "):
            continue  # the licence header
        fields = line.split()
        lemma, pointers = fields[0], int(fields[3])
        tagged, offsets = int(fields[5 + pointers]), fields[6 + pointers :]
        if tagged >= 1 and offsets and lemma.isalpha() and lemma.islower():
            first_sense.setdefault(int(offsets[0]), lemma)
    rows: list[Row] = []
    with open(data, "rb") as fh:
        for offset in sorted(first_sense):
            fh.seek(offset)
            line = fh.readline().decode("utf-8", errors="replace")
            head, _, gloss = line.partition(" | ")
            if head.split()[1] in _WORDNET_SKIPPED_FILES:
                continue
            words = head.split()[4 : 4 + 2 * int(head.split()[3], 16) : 2]
            if first_sense[offset] not in words:
                continue  # spelt with capitals in the synset: a proper noun
            row = _wordnet_row(first_sense[offset], gloss.strip(), len(rows) + 1)
            if row is not None:
                rows.append(row)
    return rows


def _wordnet_row(lemma: str, gloss: str, line: int) -> Row | None:
    parts = [p.strip() for p in gloss.split(";") if p.strip()]
    if not parts or parts[0].startswith('"'):
        return None
    definition = parts[0].rstrip(".")
    examples = [p.strip('"').strip() for p in parts[1:] if p.startswith('"') and p.endswith('"')]
    if not _DETERMINER.match(definition) or not 4 <= len(definition.split()) <= 30 or _NOT_NEUTRAL.search(gloss):
        return None
    if any(c in definition for c in "()[]"):
        return None
    if definition.lower().startswith(("a ", "an ")):  # a count noun: "a lighthouse"
        subject = ("an " if lemma[0] in "aeiou" else "a ") + lemma
    else:  # "the act of managing": a mass noun, "management"
        subject = lemma
    answer = f"{subject[0].upper()}{subject[1:]} is {definition}."
    if examples and 3 <= len(examples[0].split()) <= 25:
        example = examples[0].rstrip(".!?")
        answer += f' For example: "{example[0].upper()}{example[1:]}."'
    return Row(line=line, question=f"What is {subject}?", answer=answer)


_STDLIB_SKIPPED = {
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "pydoc_data",
    "site-packages",
    "dist-packages",
}
_IMPERATIVE = re.compile(
    r"^(Return|Create|Convert|Remove|Get|Set|Read|Write|Open|Close|Compute|Calculate|Make|Build|Check|Test|Find|Add|Delete|"
    r"Start|Stop|Run|Print|Format|Parse|Split|Join|Copy|Move|Send|Receive|Encode|Decode|Compare|Generate|Load|Save|Register|"
    r"Wait|Raise|Change|Update|Reset|Apply|Call|Initialize|Search|Match|Replace|Translate|Wrap|Fill|Clear|Insert|Append|"
    r"Extend|Sort|Count|Determine|Handle|Process|Emit|Flush|Acquire|Release|Lock|Unlock|Construct|Shut|Flatten|Fetch|"
    r"Look|Install|Remove|Execute|Evaluate|Validate|Verify|Quote|Unquote|Escape|Split|Strip|Normalize|Expand|Resolve|Pack|Unpack)\b"
)
_STDLIB_QUESTIONS = ("What does {name}() do in Python?", "In Python, what is {name}() for?", "What does the Python function {name}() do?")


def python_stdlib_pairs(root: Path | None = None) -> list[Row]:
    """Factual neutral pairs from the docstrings of the Python standard library (read with
    ``ast``, nothing imported): "What does textwrap.dedent() do in Python?" -> "textwrap.dedent()
    removes any common leading whitespace from every line in text." One row per public
    function or method of a public class whose docstring starts with a 6-35 word sentence in
    the imperative ("Return ...", "Remove ..."), turned into the third person."""
    import ast
    import random
    import sysconfig

    root = root or Path(sysconfig.get_paths()["stdlib"])
    rows: list[Row] = []
    rng = random.Random(0)
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _STDLIB_SKIPPED or (p.startswith("_") and p != "__init__.py") for p in parts):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for name, node in _public_functions(tree):
            answer = _third_person(ast.get_docstring(node) or "")
            if answer:
                qualified = f"{module}.{name}"
                question = rng.choice(_STDLIB_QUESTIONS).format(name=qualified)
                rows.append(Row(line=len(rows) + 1, question=question, answer=f"{qualified}() {answer}"))
    return rows


def _public_functions(tree: Any) -> Iterator[tuple[str, Any]]:
    import ast

    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                    yield f"{node.name}.{item.name}", item


def _third_person(doc: str) -> str | None:
    """The docstring's first sentence with its imperative verb in the third person
    ("Return the median." -> "returns the median."), or None when it does not fit."""
    first = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"^(.+?\.)(\s|$)", first)
    if not match or not _IMPERATIVE.match(match.group(1)):
        return None
    sentence = match.group(1)
    if not 6 <= len(sentence.split()) <= 35 or any(c in sentence for c in "`>|{}") or "--" in sentence:
        return None
    verb, rest = sentence.split(" ", 1)
    if verb.endswith(("s", "sh", "ch", "x", "z")):
        verb += "es"
    elif verb.endswith("y") and verb[-2] not in "aeiou":
        verb = verb[:-1] + "ies"
    else:
        verb += "s"
    return f"{verb.lower()} {rest}"


def load_source(source: str) -> list[Row]:
    """``builtin:chatterbot``, ``builtin:wordnet``, ``builtin:python-stdlib`` or any data file with question/answer columns."""
    if source == "builtin:chatterbot":
        return chatterbot_pairs()
    if source == "builtin:wordnet":
        return wordnet_pairs()
    if source == "builtin:python-stdlib":
        return python_stdlib_pairs()
    rows = read_rows(source)
    if any(r.question is None for r in rows):
        raise DataError(f"{source}: a synthesis source needs question and answer columns", hint="rename the columns")
    return rows
