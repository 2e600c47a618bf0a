"""Measure local chat models as tone rewriters with irm's synthesizer and scorer.

For every model and prompt design, the synthesizer's candidate maker (irm.data.synthesis)
writes K sampled candidates for each pair of one small fixed sample of neutral pairs
(chatterbot + WordNet), and the emotion scorer reads each. Reported per model x design:

* kept share: pairs with at least one candidate whose top emotion is the target and that
  keeps >= 50% of the neutral answer's content words (the issue's bar), for the first
  1, 2 .. K candidates; and the same with the synthesizer's own margin (p(target) -
  runner-up >= 0.2);
* tokens/s: generated tokens (EOS and padding excluded) per second of generation, all
  candidates of the sample in one batch.

    OMP_NUM_THREADS=1 nice -n 10 flock /work/team/longjob.lock .venv/bin/python scripts/measure_rewriters.py \\
        --model gemma3-270m=/tmp/gemma3-270m.gguf --model qwen2.5-coder-0.5b=/tmp/qwen05.gguf ...

Results are appended per model x design to build/rewriters/results.jsonl (a finished pair
is not redone), the candidates to build/rewriters/candidates.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from irm.data.sources import chatterbot_pairs, wordnet_pairs  # noqa: E402
from irm.data.synthesis import REWRITE_PROMPTS as DESIGNS  # noqa: E402
from irm.data.synthesis import TONE, CandidateMaker, SynthesisConfig, echoes, facts_kept  # noqa: E402
from irm.evaluation.scoring import EmotionScorer  # noqa: E402

OUT = ROOT / "build" / "rewriters"
SEED = 7


def sample_pairs(n: int) -> list:
    rng = random.Random(SEED)
    chat = [r for r in chatterbot_pairs() if len((r.answer or "").split()) >= 6]
    wordnet = wordnet_pairs()
    return rng.sample(chat, n // 2) + rng.sample(wordnet, n - n // 2)


def summary() -> str:
    """A markdown table of every model x design measured: kept shares as the issue defines them
    (top = anger and >= 50% of the facts kept), then also without candidates that repeat the
    prompt's instruction or hold a code block (the synthesizer's guard, see
    ``irm.data.synthesis.echoes``), for the first 1 and all K candidates; and tokens/s."""
    results = [json.loads(x) for x in (OUT / "results.jsonl").read_text().splitlines()]
    candidates = [json.loads(x) for x in (OUT / "candidates.jsonl").read_text().splitlines()]
    lines = [
        "| model | design | kept, K=1 | kept, K=2 | kept without echoes, K=1 | kept without echoes, K=2 | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        instruction = DESIGNS[r["design"]].format(tone=TONE["anger"], question="", answer="")
        per_pair: dict[str, list[tuple[bool, bool]]] = {}
        for c in candidates:
            if c["model"] == r["model"] and c["design"] == r["design"]:
                ok = c["top"] == "anger" and c["facts_kept"] >= 0.5 and bool(c["candidate"])
                clean = ok and not echoes(c["candidate"], instruction) and "```" not in c["candidate"]
                per_pair.setdefault(c["question"], []).append((ok, clean))
        pairs = list(per_pair.values())

        def share(n: int, which: int, pairs: list = pairs) -> str:
            return f"{sum(any(o[which] for o in p[:n]) for p in pairs)}/{len(pairs)}"

        k = r["candidates"]
        lines.append(
            f"| {r['model']} | {r['design']} | {share(1, 0)} | {share(k, 0)} | {share(1, 1)} | {share(k, 1)} | {r['tokens_per_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH of a GGUF file or model folder")
    parser.add_argument("--summary", action="store_true", help="print the table of everything measured so far")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16 is ~3x faster than float32 on CPUs with AMX")
    args = parser.parse_args()
    if args.summary:
        print(summary())
        return

    import torch

    from irm.hosts.loading import load_host

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.jsonl"
    done = {(r["model"], r["design"]) for r in map(json.loads, results.read_text().splitlines())} if results.is_file() else set()
    pairs = sample_pairs(args.pairs)
    scorer = EmotionScorer()
    k = args.candidates
    for spec in args.model:
        name, _, path = spec.partition("=")
        todo = [d for d in args.designs.split(",") if (name, d) not in done]
        if not todo:
            continue
        started = time.perf_counter()
        host = load_host(path, dtype=args.dtype)
        load_seconds = time.perf_counter() - started
        for design in todo:
            config = SynthesisConfig(
                emotion="anger", generator=path, candidates=k, seed=SEED, batch_size=len(pairs), max_new_tokens=args.max_new_tokens
            )
            config.prompt_template = DESIGNS[design]
            maker = CandidateMaker(config)
            maker.host = host
            started = time.perf_counter()
            candidates = maker(pairs, batch_seed=SEED)
            seconds = time.perf_counter() - started
            tokens = maker.tokens_generated
            scores = scorer.score([c for cs in candidates for c in cs])
            record = {"model": name, "design": design, "pairs": len(pairs), "candidates": k, "tokens": tokens}
            record["seconds"] = round(seconds, 1)
            record["tokens_per_s"] = round(tokens / seconds, 2)
            record["load_seconds"] = round(load_seconds, 1)
            record["dtype"] = args.dtype
            ok_top, ok_margin = [[False] * k for _ in pairs], [[False] * k for _ in pairs]
            with open(OUT / "candidates.jsonl", "a", encoding="utf-8") as fh:
                for i, (row, cs) in enumerate(zip(pairs, candidates)):
                    for j, text in enumerate(cs):
                        s = scores[i * k + j]
                        kept = facts_kept(row.answer or "", text)
                        ok_top[i][j] = s.top == "anger" and kept >= 0.5
                        ok_margin[i][j] = ok_top[i][j] and s.margin >= 0.2
                        item = {"model": name, "design": design, "question": row.question, "source_answer": row.answer}
                        item |= {"candidate": text, "top": s.top, "p_anger": round(s.probs["anger"], 3), "facts_kept": round(kept, 3)}
                        fh.write(json.dumps(item, ensure_ascii=False) + "\n")
            for n in range(1, k + 1):
                record[f"kept_share_k{n}"] = round(sum(any(o[:n]) for o in ok_top) / len(pairs), 3)
                record[f"kept_share_margin_k{n}"] = round(sum(any(o[:n]) for o in ok_margin) / len(pairs), 3)
            with open(results, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
        del host


if __name__ == "__main__":
    main()
