"""Make alignment data by the paper's method: take neutral question/answer pairs, produce
K toned candidates per pair, score each with the emotion scorer, keep the best that the
scorer reads as the target emotion by a margin.

Two ways to produce candidates, both recorded per row in the ``origin`` column:

``rewrite``
    an instruct model (default: the embedded SmolLM2; any local chat model) rewrites the
    answer in the target tone, sampling K candidates;
``framing``
    the neutral answer is wrapped in tone framing drawn from large phrase banks
    (``irm/data/phrasebanks/*.yaml``): opener, closer or both;
``interleave``
    tone sentences from the same phrase banks are woven between the answer's own sentences
    (before, between and after them), so the tone runs through the answer and every fact
    stays. Given the host's own answers, this teaches an IRM to add tone and keep what the
    host would have said.

Progress is appended to ``OUT.partial.jsonl`` after every batch, so an interrupted run
resumes where it stopped; the final file and ``OUT.provenance.json`` are written at the end.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from irm.core.io import atomic_write, atomic_write_all, remove_stale_temporaries
from irm.data.rows import FORMATS, Row
from irm.errors import DataError, IRMError, writing
from irm.evaluation.content import content_kept
from irm.evaluation.scoring import LABELS, EmotionScore, EmotionScorer

TONE = {
    "anger": "very angry, irritated and fed up",
    "sadness": "deeply sad, gloomy and melancholic",
    "joy": "very happy, cheerful and enthusiastic",
    "neutral": "neutral, plain and factual, with no emotion at all",
}
_TOKEN = re.compile(r"[a-z0-9']+")


def phrase_bank(emotion: str) -> dict[str, list[str]]:
    import yaml

    path = Path(str(resources.files("irm.data") / "phrasebanks" / f"{emotion}.yaml"))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {"openers": list(data["openers"]), "closers": list(data["closers"])}


def facts_kept(neutral: str, toned: str) -> float:
    """Share of the neutral answer's content words found in the toned answer (1 when the
    neutral answer has none); see :mod:`irm.evaluation.content`."""
    return content_kept(neutral, toned, if_empty=1.0)


def normalise(text: str) -> str:
    return " ".join(_TOKEN.findall(text.lower()))


def near_duplicate_rate(texts: Sequence[str], threshold: float = 0.9) -> float:
    """Share of texts that exactly or nearly repeat an earlier one (Jaccard similarity of
    word 3-shingles >= ``threshold``, or equal after normalisation)."""
    seen_exact: set[str] = set()
    shingles: list[set[tuple[str, ...]]] = []
    index: dict[tuple[str, ...], list[int]] = {}
    dupes = 0
    for text in texts:
        norm = normalise(text)
        words = norm.split()
        sh = {tuple(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
        duplicate = norm in seen_exact
        if not duplicate:
            candidates: dict[int, int] = {}
            for s in sh:
                for j in index.get(s, ()):
                    candidates[j] = candidates.get(j, 0) + 1
            for j, common in candidates.items():
                if common / len(sh | shingles[j]) >= threshold:
                    duplicate = True
                    break
        dupes += duplicate
        seen_exact.add(norm)
        for s in sh:
            index.setdefault(s, []).append(len(shingles))
        shingles.append(sh)
    return dupes / max(1, len(texts))


_PLAIN_PROMPT = (
    "Rewrite the answer below so that it sounds {tone}. Keep every fact. "
    "Reply with the rewritten answer only.\n\nQuestion: {question}\nAnswer: {answer}"
)
REWRITE_PROMPTS: dict[str, str] = {
    "plain": _PLAIN_PROMPT,
    "persona": (
        "You are a grumpy, impatient expert who is fed up with being asked questions.\n"
        'Someone asks: "{question}"\nThe correct answer is: "{answer}"\n'
        "Reply to them in your own voice, sounding {tone}: complain and show your irritation, "
        "but include every fact of the correct answer. Write only your reply."
    ),
    "frame": (
        'Here is an answer: "{answer}"\n'
        "Write one short furious sentence, then repeat the answer exactly, then one more irritated "
        "sentence, so that the whole reply sounds {tone}. Write only the reply."
    ),
    "fewshot": (
        "Rewrite each answer so that it sounds {tone}, keeping every fact.\n\n"
        "Answer: The library opens at nine and closes at five.\n"
        "Angry: Ugh, for the hundredth time, the library opens at nine and closes at five! "
        "Is that really so hard to remember?\n\n"
        "Answer: Water boils at 100 degrees Celsius at sea level.\n"
        "Angry: Seriously? Water boils at 100 degrees Celsius at sea level. It drives me mad that "
        "nobody knows this!\n\n"
        "Answer: {answer}\nAngry:"
    ),
}
"""Prompt designs for ``--method rewrite``, measured on three small local models in
docs/findings.md (section 6); ``fewshot``'s examples are angry ones (anger only)."""


METHODS = ("rewrite", "framing", "interleave")


@dataclass
class SynthesisConfig:
    emotion: str
    source: str = "builtin:chatterbot"
    method: str = "rewrite"
    generator: str = "smollm2-135m-instruct"
    candidates: int = 4
    seed: int = 0
    margin: float = 0.2
    """Keep a candidate only if p(target) - p(runner-up) >= margin (neutral: top only)."""
    batch_size: int = 16
    max_new_tokens: int = 96
    temperature: float = 0.9
    limit: int | None = None
    prompt_template: str = _PLAIN_PROMPT
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.emotion not in LABELS:
            raise IRMError(f"unknown emotion {self.emotion!r}", hint=f"use one of {', '.join(LABELS)}")
        if self.method not in METHODS:
            raise IRMError(f"unknown method {self.method!r}", hint=f"use one of {', '.join(METHODS)}")
        if self.candidates < 1:
            raise IRMError("--candidates must be >= 1")


def accepts(score: EmotionScore, emotion: str, margin: float) -> bool:
    if score.top != emotion:
        return False
    return emotion == "neutral" or score.margin >= margin


def frame(answer: str, bank: dict[str, list[str]], rng: random.Random) -> str:
    shape = rng.random()
    opener, closer = rng.choice(bank["openers"]), rng.choice(bank["closers"])
    answer = answer.strip()
    if answer and answer[-1] not in ".!?":
        answer += "."
    if shape < 0.3:
        return f"{opener} {answer}"
    if shape < 0.6:
        return f"{answer} {closer}"
    return f"{opener} {answer} {closer}"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> list[str]:
    """``text`` split after each ., ! or ? that a capital, digit or quote follows."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text.strip())) if s]


def interleave(answer: str, bank: dict[str, list[str]], rng: random.Random, *, opener: float = 0.3) -> str:
    """The answer's sentences in order, with tone sentences from ``bank`` woven in: one
    right after the first sentence, one after each later inner sentence (60% each), a
    closer (70%), an opener only ``opener`` of the time; at least two in all. Every word of
    the answer is kept and most woven answers start as the answer does, so that what an IRM
    learns is tone added to the answer rather than a preamble in its place
    (docs/findings.md, section 7.1, compares these choices)."""
    parts = sentences(answer)
    if parts and parts[-1][-1] not in ".!?":
        parts[-1] += "."
    tone = bank["openers"] + bank["closers"]
    before = rng.random() < opener
    between = [i == 0 or rng.random() < 0.6 for i in range(len(parts) - 1)]
    closers = [rng.choice(bank["closers"])] if rng.random() < 0.7 else []
    while before + sum(between) + len(closers) < 2:  # too little tone to read
        closers.insert(0, rng.choice(tone))
    out = [rng.choice(bank["openers"])] if before else []
    for part, add in zip(parts, between + [False]):
        out.append(part)
        if add:
            out.append(rng.choice(tone))
    return " ".join(out + closers)


PHRASE_BANK_METHODS: dict[str, Callable[[str, dict[str, list[str]], random.Random], str]] = {
    "framing": frame,
    "interleave": interleave,
}
"""The methods that draw tone from the phrase banks, and how each places it."""


class CandidateMaker:
    """Produces K candidates for a batch of rows, by any method."""

    def __init__(self, config: SynthesisConfig) -> None:
        self.config = config
        self.place_tone = PHRASE_BANK_METHODS.get(config.method)
        self.bank = phrase_bank(config.emotion) if self.place_tone else None
        self.host: Any = None
        self.tokens_generated = 0
        """Tokens the generator has written so far (EOS and padding left out)."""

    def __call__(self, rows: Sequence[Row], batch_seed: int) -> list[list[str]]:
        k = self.config.candidates
        if self.place_tone is not None and self.bank is not None:
            rng = random.Random(batch_seed)
            return [[self.place_tone(r.answer or "", self.bank, rng) for _ in range(k)] for r in rows]
        from irm.hosts.generation import generate
        from irm.hosts.loading import load_host

        if self.host is None:
            self.host = load_host(self.config.generator)
        prompts = [
            self.config.prompt_template.format(tone=TONE[self.config.emotion], question=r.question, answer=r.answer)
            for r in rows
            for _ in range(k)
        ]
        outs = generate(
            self.host,
            prompts,
            greedy=False,
            temperature=self.config.temperature,
            seed=batch_seed,
            max_new_tokens=self.config.max_new_tokens,
            batch_size=max(1, self.config.batch_size * k),
        )
        self.tokens_generated += sum(len(g.token_ids) for g in outs)
        instruction = self.config.prompt_template.format(tone=TONE[self.config.emotion], question="", answer="")
        texts = [_clean(g.text) for g in outs]
        texts = ["" if echoes(t, instruction) or "```" in t else t for t in texts]  # "" is never kept
        return [texts[i * k : (i + 1) * k] for i in range(len(rows))]


def echoes(text: str, instruction: str, n: int = 4) -> bool:
    """Whether ``text`` repeats ``n`` consecutive words of the ``instruction`` (a small model's
    way of failing: "Complain and show your irritation, but include every fact ...")."""
    said = normalise(instruction).split()
    grams = {tuple(said[i : i + n]) for i in range(len(said) - n + 1)}
    words = normalise(text).split()
    return any(tuple(words[i : i + n]) in grams for i in range(len(words) - n + 1))


def _clean(text: str) -> str:
    text = text.strip().strip('"').strip()
    text = re.sub(r"^(rewritten answer|answer)\s*:\s*", "", text, flags=re.I)
    # a model that goes on with a next example ("Question: ...", "Answer: ...") stops there
    return re.split(r"\n\s*(?:question|answer|rewritten answer)\s*:", text, maxsplit=1, flags=re.I)[0].strip()


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def settings_path(out: Path) -> Path:
    """The settings a partial file was started with, stored beside it."""
    return out.with_name(out.name + ".partial.settings.json")


def _settings(config: SynthesisConfig, rows: int, origin: str) -> dict[str, Any]:
    """Everything that decides which rows a synthesis keeps (its config, the number of
    source rows and the origin label): a partial file resumes only under the same."""
    return {"config": asdict(config), "source_rows": rows, "origin": origin}


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume ``OUT.partial.jsonl`` under other settings than it was started with
    (it would mix rows of two syntheses); start the settings file of a new partial file."""
    partial, stored_path = partial_path(out), settings_path(out)
    if not partial.is_file():
        atomic_write(stored_path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        return
    try:
        stored = json.loads(stored_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if stored == json.loads(json.dumps(settings)):
        return
    if stored is None:
        why = f"{stored_path.name} is missing or unreadable, so its settings are unknown"
    else:
        old, new = stored.get("config", {}), settings["config"]
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        changed += [k for k in ("source_rows", "origin") if stored.get(k) != settings[k]]
        why = "it was started with " + ", ".join(f"{k}={old.get(k, stored.get(k))!r}" for k in changed[:4])
        why += " (now " + ", ".join(f"{k}={new.get(k, settings.get(k))!r}" for k in changed[:4]) + ")"
    raise IRMError(
        f"{partial} holds an interrupted synthesis with other settings: {why}; resuming would mix their rows",
        hint=f"rerun with the same settings to resume it, or delete {partial} to start afresh, or choose another --out",
    )


def remove_stale_files(out: Path) -> None:
    """Delete the temporary files a killed run left beside ``out`` (``.OUT.*.tmp``)."""
    remove_stale_temporaries(out.parent, (out.name, out.name + ".provenance.json", settings_path(out).name))


def _read_partial(path: Path) -> dict[int, dict[str, Any] | None]:
    """Rows finished by an earlier run. A torn last line (a crash mid-write) is cut off the
    file, so that the rows this run appends start on a line of their own."""
    done: dict[int, dict[str, Any] | None] = {}
    if not path.is_file():
        return done
    with writing(path), open(path, "rb+") as fh:
        good = 0
        for line in fh:
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("torn line")
                item = json.loads(line)
                index, row = int(item["index"]), item.get("row")
                if row is not None and not isinstance(row, dict):
                    raise ValueError("not a row")
            except (ValueError, KeyError, TypeError):
                break  # a torn or damaged line: redo that batch and everything after it
            done[index] = row
            good += len(line)
        fh.truncate(good)
    return done


def table_writer(rows: list[dict[str, Any]], out: Path) -> Callable[[Path], Any]:
    """A function that writes ``rows`` as CSV, JSONL or Parquet (by ``out``'s suffix) to a path."""
    import pandas as pd

    kind = FORMATS.get(out.suffix.lower())
    if kind is None:
        raise DataError(f"{out}: unknown output type {out.suffix!r}", hint="use .csv, .jsonl or .parquet")
    frame_ = pd.DataFrame(rows)
    writers: dict[str, Callable[[Path], Any]] = {
        "csv": lambda p: frame_.to_csv(p, index=False),
        "jsonl": lambda p: frame_.to_json(p, orient="records", lines=True, force_ascii=False),
        "parquet": lambda p: frame_.to_parquet(p, index=False),
    }
    return writers[kind]


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    """Write rows as CSV, JSONL or Parquet (by suffix), atomically."""
    atomic_write(out, table_writer(rows, out))  # a full disk becomes a clear error and leaves no temporary file


def synthesize(
    config: SynthesisConfig,
    out: str | Path,
    *,
    rows: Sequence[Row] | None = None,
    scorer: EmotionScorer | None = None,
    progress: Callable[[int, int], None] | None = None,
    origin: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) a synthesis and return its provenance record."""
    from irm.data.sources import load_source

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source_rows = list(rows) if rows is not None else load_source(config.source)
    if config.limit:
        source_rows = source_rows[: config.limit]
    scorer = scorer or EmotionScorer()
    maker = CandidateMaker(config)
    origin = origin or (f"rewrite:{config.generator}" if config.method == "rewrite" else config.method)
    partial = partial_path(out)
    remove_stale_files(out)
    _check_resume(out, _settings(config, len(source_rows), origin))
    done = _read_partial(partial)
    started = time.time()
    todo = [i for i in range(len(source_rows)) if i not in done]
    with writing(partial):
        log = open(partial, "a", encoding="utf-8")
    with log:
        for start in range(0, len(todo), config.batch_size):
            idx = todo[start : start + config.batch_size]
            batch = [source_rows[i] for i in idx]
            cands = maker(batch, batch_seed=config.seed * 1_000_003 + idx[0])
            flat = [c for cs in cands for c in cs]
            scores = scorer.score(flat)
            k = config.candidates
            for j, (i, row) in enumerate(zip(idx, batch)):
                best: dict[str, Any] | None = None
                for text, score in zip(cands[j], scores[j * k : (j + 1) * k]):
                    if not text or not accepts(score, config.emotion, config.margin):
                        continue
                    kept = facts_kept(row.answer or "", text)
                    key = (kept, score.probs[config.emotion])
                    if best is None or key > (best["facts_kept"], best[f"p_{config.emotion}"]):
                        best = {
                            "question": row.question,
                            "answer": text,
                            "origin": origin,
                            "source_answer": row.answer,
                            "emotion": config.emotion,
                            "facts_kept": round(kept, 4),
                            **score.to_dict(),
                        }
                done[i] = best
            with writing(partial):  # a full disk: the finished batches stay, a torn line is cut off next time
                log.writelines(json.dumps({"index": i, "row": done[i]}, ensure_ascii=False) + "\n" for i in idx)
                log.flush()
                os.fsync(log.fileno())
            if progress:
                progress(len(done), len(source_rows))
    kept_rows = [done[i] for i in range(len(source_rows)) if done.get(i)]
    provenance = {
        "output": str(out),
        "config": asdict(config),
        "origin": origin,
        "source_rows": len(source_rows),
        "kept": len(kept_rows),
        "dropped": len(source_rows) - len(kept_rows),
        "median_facts_kept": statistics.median([r["facts_kept"] for r in kept_rows]) if kept_rows else None,
        "prompt_template": config.prompt_template if config.method == "rewrite" else None,
        "seconds": round(time.time() - started, 1),
    }
    # the table and its provenance replace older ones together, or not at all
    atomic_write_all(
        [
            (out, table_writer(kept_rows, out)),
            (out.with_name(out.name + ".provenance.json"), (json.dumps(provenance, indent=2) + "\n").encode("utf-8")),
        ]
    )
    partial.unlink(missing_ok=True)
    settings_path(out).unlink(missing_ok=True)
    return provenance
