"""Alignment data: read rows, split them, tokenise them into training examples.

A data file is CSV, JSONL or Parquet with either ``question`` + ``answer`` columns or a
``text`` column. ``builtin:NAME`` names a dataset shipped with irm (see ``irm data list``).

Tokenised examples keep ``labels`` *aligned* with ``input_ids`` (``labels[t] == input_ids[t]``
or ``-100``); the one and only shift happens in :func:`irm.training.loss.token_loss`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irm.data.prompts import answer_ids, bos_ids, eos_ids, prompt_ids
from irm.errors import DataError

IGNORE_INDEX = -100
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
BUILTIN_PREFIX = "builtin:"


def builtin_dir() -> Path:
    return Path(str(resources.files("irm.data") / "datasets"))


def builtin_datasets() -> list[str]:
    folder = builtin_dir()
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.iterdir() if p.suffix in FORMATS})


def resolve_data_path(source: str | Path) -> Path:
    text = str(source)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        for suffix in FORMATS:
            candidate = builtin_dir() / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
        available = builtin_datasets()
        close = difflib.get_close_matches(name, available, n=1)
        raise DataError(
            f"no built-in dataset {name!r}",
            hint=(f"did you mean builtin:{close[0]}? " if close else "") + "available: " + (", ".join(available) or "none"),
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"{path}: file not found", hint="check the path, or use builtin:NAME for a shipped dataset")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file", hint="pass a .csv, .jsonl or .parquet file")
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"{path}: unknown file type {path.suffix!r}", hint="use .csv, .jsonl or .parquet")
    return path


@dataclass
class Row:
    """One example as read from a file. ``line`` is the 1-based line (CSV/JSONL) or row."""

    line: int
    question: str | None = None
    answer: str | None = None
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.text is not None:
            return {"text": self.text}
        return {"question": self.question, "answer": self.answer}


def _records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records and the line number of the first record (for messages)."""
    kind = FORMATS[path.suffix.lower()]
    try:
        raw = path.read_bytes() if kind != "parquet" else None
        if raw is not None:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = raw[: exc.start].count(b"\n") + 1
                raise DataError(f"{path}: not UTF-8 text (bad byte at line {line})", hint="re-save the file as UTF-8") from None
            if not raw.strip():
                raise DataError(f"{path}: the file is empty", hint="add rows with question/answer or text columns")
        if kind == "jsonl":
            records = []
            for number, line in enumerate(raw.decode("utf-8-sig").splitlines(), start=1):  # -sig: Excel's BOM
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}: line {number} is not valid JSON ({exc.msg})", hint="each line must be one JSON object"
                    ) from None
                if not isinstance(item, dict):
                    raise DataError(f"{path}: line {number} is not a JSON object", hint='write e.g. {"question": "...", "answer": "..."}')
                item["__line__"] = number
                records.append(item)
            _check_text_values(path, records)
            return records, 1
        import pandas as pd

        if kind == "csv":
            try:
                frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            except pd.errors.ParserError as exc:
                detail = str(exc).strip().replace("Error tokenizing data. C error: ", "")
                raise DataError(f"{path}: malformed CSV ({detail})", hint="quote fields that contain commas or newlines") from None
            first = 2
        else:
            try:
                frame = pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises many types for a bad file
                raise DataError(f"{path}: cannot read Parquet ({exc})", hint="re-write the file with pandas.to_parquet") from None
            first = 1
    except PermissionError:
        raise DataError(f"{path}: permission denied", hint="make the file readable") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory", hint="pass a data file") from None
    frame.columns = [str(c) for c in frame.columns]
    records = frame.to_dict(orient="records")
    for i, item in enumerate(records):
        item["__line__"] = i + first
    _check_text_values(path, records)
    return records, first


TEXT_COLUMNS = ("question", "answer", "text", "prompt", "source_answer")


def _check_text_values(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Refuse text columns that hold no text: a JSON object or list (which would be turned
    into its Python spelling and trained on), or a string that is not valid Unicode (a lone
    surrogate from a ``\\ud800`` escape)."""
    for item in records:
        for column in TEXT_COLUMNS:
            value = item.get(column)
            if isinstance(value, (dict, list, tuple, np.ndarray)):
                kind = "a JSON object" if isinstance(value, dict) else "a list"
                raise DataError(
                    f"{path}: line {item['__line__']}: column {column!r} holds {kind}, not text",
                    hint=f"write the {column} as a string (a JSON object is never turned into text silently)",
                )
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise DataError(
                        f"{path}: line {item['__line__']}: column {column!r} is not valid text "
                        f"(character {exc.start + 1} is a lone surrogate)",
                        hint="fix the \\uXXXX escapes in that row (a surrogate must come in a pair)",
                    ) from None


def _column_error(path: Path, columns: Sequence[str]) -> DataError:
    wanted = ("question", "answer", "text")
    hints = []
    for col in columns:
        close = difflib.get_close_matches(col.lower(), wanted, n=1, cutoff=0.6)
        if close and col != close[0]:
            hints.append(f"rename column {col!r} to {close[0]!r}")
    return DataError(
        f"{path}: needs columns 'question' and 'answer', or 'text'; found {', '.join(map(repr, columns)) or 'none'}",
        hint="; ".join(hints) or "add a header row with question,answer (or text)",
    )


def read_rows(source: str | Path, *, limit: int | None = None) -> list[Row]:
    """Read and validate a data file; any problem raises :class:`DataError` naming rows."""
    path = resolve_data_path(source)
    records, _ = _records(path)
    if not records:
        raise DataError(f"{path}: no rows", hint="add rows with question/answer or text columns")
    columns = sorted({k for r in records for k in r if k != "__line__"})
    qa = "question" in columns and "answer" in columns
    if not qa and "text" not in columns:
        raise _column_error(path, columns)
    rows: list[Row] = []
    empty: list[int] = []
    for item in records:
        line = int(item["__line__"])
        if qa:
            q, a = _text(item.get("question")), _text(item.get("answer"))
            if not q or not a:
                empty.append(line)
                continue
            rows.append(Row(line=line, question=q, answer=a))
        else:
            t = _text(item.get("text"))
            if not t:
                empty.append(line)
                continue
            rows.append(Row(line=line, text=t))
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise DataError(
            f"{path}: {len(empty)} empty row(s) at line(s) {shown}",
            hint="fill in or delete those rows (irm data check FILE lists every problem)",
        )
    return rows[:limit] if limit else rows


def read_pairs(source: str | Path) -> tuple[list[Row], list[Row]]:
    """Contrastive pairs from a toned data file with a ``source_answer`` column (the
    neutral answer each toned answer was made from, as in the built-in emotion sets):
    ``(toned rows, neutral rows)``, the same questions in the same order."""
    path = resolve_data_path(source)
    records, _ = _records(path)
    if not records or "source_answer" not in records[0]:
        raise DataError(f"{path}: no 'source_answer' column to pair each answer with", hint="pass a neutral data file instead")
    pairs = [(_text(r.get("question")), _text(r.get("answer")), _text(r.get("source_answer")), int(r["__line__"])) for r in records]
    pairs = [p for p in pairs if all(p[:3])]
    if not pairs:
        raise DataError(f"{path}: no row has a question, an answer and a source_answer")
    return ([Row(line=n, question=q, answer=a) for q, a, _, n in pairs], [Row(line=n, question=q, answer=s) for q, _, s, n in pairs])


def read_prompts(source: str | Path, *, limit: int | None = None) -> list[str]:
    """The prompts of a file with a ``question``, ``prompt`` or ``text`` column (e.g.
    ``builtin:prompts``; a question/answer file gives its questions), empty ones skipped."""
    path = resolve_data_path(source)
    records, _ = _records(path)
    columns = {k for r in records for k in r if k != "__line__"}
    column = prompt_column(columns)
    if column is None:
        raise DataError(f"{path}: needs a 'question', 'prompt' or 'text' column; found {', '.join(sorted(columns)) or 'none'}")
    prompts = [t for t in (_text(r.get(column)) for r in records) if t]
    if not prompts:
        raise DataError(f"{path}: no prompts", hint=f"fill in the {column!r} column")
    return prompts[:limit] if limit else prompts


PROMPT_COLUMNS = ("question", "prompt", "text")


def prompt_column(columns: Iterable[str]) -> str | None:
    """The column that :func:`read_prompts` reads prompts from, or None."""
    present = set(columns)
    return next((c for c in PROMPT_COLUMNS if c in present), None)


def is_prompts_file(columns: Iterable[str]) -> bool:
    """True for a file of prompts only: a prompt column and no answers (``builtin:prompts``)."""
    present = set(columns)
    return "answer" not in present and "text" not in present and prompt_column(present) is not None


def read_texts(source: str | Path) -> list[str]:
    """The texts of a data file: its answers (or text column), or its prompts for a file of
    prompts only (``builtin:prompts``)."""
    path = resolve_data_path(source)
    records, _ = _records(path)
    if is_prompts_file({k for r in records for k in r if k != "__line__"}):
        return read_prompts(path)
    return [r.answer or r.text or "" for r in read_rows(path)]


def count_rows(source: str | Path) -> int:
    """Rows of a data file: training rows, or prompts for a file of prompts only."""
    return len(read_texts(source))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value).strip()


def split_rows(rows: Sequence[Row], *, seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[Row]]:
    """A deterministic shuffle-and-cut into train / validation / test."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_val = int(round(len(rows) * val_fraction))
    n_test = int(round(len(rows) * test_fraction))
    if val_fraction > 0 and n_val == 0 and len(rows) > 2:
        n_val = 1
    if len(rows) - n_val - n_test < 1:
        raise DataError(f"only {len(rows)} rows: too few to split", hint="add rows or lower --val-fraction/--test-fraction")
    pick = lambda idx: [rows[i] for i in sorted(idx)]  # noqa: E731
    return {
        "validation": pick(order[:n_val]),
        "test": pick(order[n_val : n_val + n_test]),
        "train": pick(order[n_val + n_test :]),
    }


def write_jsonl(rows: Sequence[Row], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    line: int = 0
    """The row's line in its data file (for messages)."""


@dataclass
class TokenizeReport:
    rows: int
    truncated: int
    dropped: int
    """Rows left with no trainable token after truncation."""
    dropped_lines: list[int] = field(default_factory=list)
    needed_length: int = 0
    """The smallest max_length that would keep every dropped row (0: none dropped)."""


def tokenize_rows(
    rows: Sequence[Row],
    tokenizer: Any,
    *,
    max_length: int,
    loss_on: str = "answer",
    chat: bool = True,
) -> tuple[list[Example], TokenizeReport]:
    """Turn rows into examples. Question/answer rows are formatted by :mod:`irm.data.prompts`
    (the chat template when the tokenizer has one, else ``Question: ...\\nAnswer: ...``,
    exactly as generation formats a question) and, with ``loss_on="answer"``,
    only the answer tokens carry labels."""
    if loss_on not in ("answer", "all"):
        raise DataError(f"unknown loss_on {loss_on!r}", hint="use 'answer' or 'all'")
    eos = eos_ids(tokenizer)
    examples, truncated, dropped = [], 0, 0
    dropped_lines: list[int] = []
    needed = 0
    for row in rows:
        if row.text is not None:
            prompt_ids_: list[int] = bos_ids(tokenizer, chat=chat)
            target_ids = tokenizer(row.text, add_special_tokens=False)["input_ids"] + eos
        else:
            question, answer = str(row.question), str(row.answer)
            prompt_ids_ = prompt_ids(tokenizer, question, chat=chat)
            target_ids = answer_ids(tokenizer, question, answer, chat=chat)
        ids = list(prompt_ids_) + list(target_ids)
        mask_len = len(prompt_ids_) if loss_on == "answer" else 0
        labels = [IGNORE_INDEX] * mask_len + ids[mask_len:]
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        # position 0 is never a target (nothing precedes it)
        if sum(1 for x in labels[1:] if x != IGNORE_INDEX) == 0:
            dropped += 1
            dropped_lines.append(row.line)
            needed = max(needed, mask_len + 1)
            continue
        examples.append(Example(input_ids=ids, labels=labels, line=row.line))
    report = TokenizeReport(rows=len(rows), truncated=truncated, dropped=dropped, dropped_lines=dropped_lines, needed_length=needed)
    return examples, report


def collate(examples: Sequence[Example], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example (or ``pad_to``); padding is masked and ignored."""
    width = pad_to or max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class LengthGroupedBatches:
    """Deterministic batches of similar length: shuffle by ``(seed, epoch)``, sort within
    windows of ``window`` batches, shuffle the batches. With several processes each global
    batch of ``batch_size * world_size`` rows is cut into per-rank slices, so the global
    batch is the same whatever the number of processes.

    ``skip`` resumes mid-epoch: the first ``skip`` global batches of the epoch are left out
    (until the next :meth:`set_epoch` with another epoch).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        group_by_length: bool = True,
        window: int = 64,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.window = window
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def global_batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        size = self.batch_size * self.world_size
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            chunk = size * self.window
            order = (
                np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in np.array_split(order, max(1, -(-n // chunk)))])
                if n
                else order
            )
        batches = [order[i : i + size] for i in range(0, n - size + 1, size)] if n >= size else [order]
        if self.shuffle and self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.skip :]:
            part = batch[self.rank :: self.world_size] if self.world_size > 1 else batch
            yield [int(i) for i in part]

    def __len__(self) -> int:
        # The whole epoch, skipped batches included: Lightning counts restored batches.
        return len(self.global_batches())


@dataclass
class CheckReport:
    path: str
    rows: int
    columns: list[str]
    kind: str
    errors: list[str]
    warnings: list[str]
    token_lengths: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _lines(numbers: Sequence[int]) -> str:
    return ", ".join(map(str, numbers[:10])) + (f" ... ({len(numbers)} in all)" if len(numbers) > 10 else "")


def check_data(
    source: str | Path, tokenizer: Any | None = None, *, max_length: int = 128, chat: bool = True, context: int | None = None
) -> CheckReport:
    """Every problem of a data file at once (unlike :func:`read_rows`, which stops at the
    first): format, columns, empty rows, duplicates and, with a tokenizer, token lengths
    (rows longer than the host's ``context`` are errors)."""
    path = resolve_data_path(source)
    records, _ = _records(path)
    columns = sorted({k for r in records for k in r if k != "__line__"})
    report = CheckReport(path=str(path), rows=len(records), columns=columns, kind=FORMATS[path.suffix.lower()], errors=[], warnings=[])
    qa = "question" in columns and "answer" in columns
    if not records:
        report.errors.append("the file has no rows")
        return report
    prompts_only = not qa and "text" not in columns and is_prompts_file(columns)
    if not qa and "text" not in columns and not prompts_only:
        report.errors.append(str(_column_error(path, columns)))
        return report
    if prompts_only:
        report.warnings.append(
            "prompts only (no answer column): usable as --prompts for generate, record, analyze and evaluate, not as training data"
        )
    fields = ("question", "answer") if qa else ("text",) if "text" in columns else (prompt_column(columns),)
    empty = [int(r["__line__"]) for r in records if any(not _text(r.get(f)) for f in fields)]
    if empty:
        report.errors.append(f"empty {'/'.join(fields)} at line(s) {_lines(empty)}: fill them in or delete those rows")
    first_seen: dict[str, int] = {}
    dupes: list[int] = []
    for r in records:
        key = " | ".join(" ".join(_text(r.get(f)).lower().split()) for f in fields)
        if key in first_seen:
            dupes.append(int(r["__line__"]))
        else:
            first_seen[key] = int(r["__line__"])
    if dupes:
        report.warnings.append(f"{len(dupes)} duplicate row(s) at line(s) {_lines(dupes)}: remove them to avoid over-weighting")
    if tokenizer is not None and not empty:
        rows = [Row(line=int(r["__line__"]), **{("text" if prompts_only else f): _text(r.get(f)) for f in fields}) for r in records]
        examples, _ = tokenize_rows(rows, tokenizer, max_length=10**9, loss_on="all", chat=chat)
        lengths = [len(e.input_ids) for e in examples]
        long = [row.line for row, n in zip(rows, lengths) if n > max_length]
        report.token_lengths = {"min": min(lengths), "mean": float(np.mean(lengths)), "max": max(lengths)}
        too_long = [row.line for row, n in zip(rows, lengths) if context and n > context and max_length > context]
        if too_long:
            report.errors.append(
                f"{len(too_long)} row(s) longer than the host's context of {context} tokens at line(s) {_lines(too_long)}: "
                f"shorten them, or train with --max-length {context} or less so that they are truncated"
            )
        if long:
            report.warnings.append(
                f"{len(long)} row(s) longer than {max_length} tokens at line(s) {_lines(long)}: they will be truncated "
                "(raise --max-length or shorten them)"
            )
    return report
