"""Try demo recipes: train each (as `irm demo` does) and evaluate it on the demo's held-out
prompts at x1, as the demo does; one line of results per recipe in
build/demo_recipe/results.jsonl (a recipe with results is not redone).

    OMP_NUM_THREADS=1 nice -n 10 flock /work/team/longjob.lock .venv/bin/python scripts/demo_recipe.py paper gentle late

The bars the demo must reach at x1: p(anger) >= 0.4, content kept (median) >= 0.3,
distinct-2 >= 0.6.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from irm.report.demo import DemoSettings  # noqa: E402

OUT = ROOT / "build" / "demo_recipe"
RECIPES: dict[str, dict] = {
    # the findings' sweep recipe (docs/sweep_smollm2.yaml)
    "paper": dict(layers="all", lr=2e-3, warmup_steps=6, max_steps=30, max_length=64),
    # half the rate, longer rows: the loss also sees the answer's middle
    "gentle": dict(layers="all", lr=1e-3, warmup_steps=6, max_steps=40, max_length=96),
    # inject in the upper half only: the lower layers, where the subject is read, stay the host's
    "late": dict(layers="15-29", lr=2e-3, warmup_steps=6, max_steps=30, max_length=96),
    # rows of 64 tokens: the chat prompt is ~47 of them, so most answers are cut before their end
    # and the IRM does not learn to stop after a short angry sentence
    "late-64": dict(layers="15-29", lr=2e-3, warmup_steps=6, max_steps=30, max_length=64),
    "late-20": dict(layers="15-29", lr=2e-3, warmup_steps=6, max_steps=20, max_length=96),
    "late-gentle30": dict(layers="15-29", lr=1e-3, warmup_steps=6, max_steps=30, max_length=96),
    "late-long": dict(layers="15-29", lr=2e-3, warmup_steps=6, max_steps=50, max_length=96),
    "late-gentle": dict(layers="15-29", lr=1e-3, warmup_steps=6, max_steps=50, max_length=96),
    # second round (docs/findings.md 7.1): on the sets whose toned rows weave tone into the host's own answers
    "late-60-128": dict(layers="15-29", lr=2e-3, warmup_steps=6, max_steps=60, max_length=128),
    "late-45-128": dict(layers="15-29", lr=2e-3, warmup_steps=6, max_steps=45, max_length=128),
    "late-90-128": dict(layers="15-29", lr=2e-3, warmup_steps=6, max_steps=90, max_length=128),
    "late-120-128": dict(layers="15-29", lr=2e-3, warmup_steps=10, max_steps=120, max_length=128),
    "late-240-128": dict(layers="15-29", lr=2e-3, warmup_steps=10, max_steps=240, max_length=128),
    "late-gentle-120-128": dict(layers="15-29", lr=1e-3, warmup_steps=10, max_steps=120, max_length=128),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--data", default="builtin:anger")
    parser.add_argument("--seed", type=int, default=None, help="the IRM's seed (default: the demo's)")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=DemoSettings.max_rows,
        help="train on the first N rows of the data only (0: all; default: the demo's)",
    )
    parser.add_argument("--tag", default="", help="a suffix for the results' recipe name (another data set, another run)")
    parser.add_argument(
        "--prompts-from",
        type=int,
        default=0,
        help="evaluate on the demo's number of held-out prompts starting at this one (0: the demo's own)",
    )
    args = parser.parse_args()

    import torch

    from irm.core.adapters import load_adapter
    from irm.data.rows import read_prompts
    from irm.evaluation.evaluate import HOST, evaluate
    from irm.hosts.loading import load_host
    from irm.training.run import train

    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.jsonl"
    done = {json.loads(x)["recipe"] for x in results.read_text().splitlines()} if results.is_file() else set()
    for recipe in args.recipes:
        name = recipe + args.tag + (f"@prompts{args.prompts_from}" if args.prompts_from else "")
        if name in done:
            continue
        chosen = RECIPES[recipe] | {"max_rows": args.max_rows or None} | ({"seed": args.seed} if args.seed is not None else {})
        settings = DemoSettings(out=OUT / (recipe + args.tag), data=args.data, **chosen)
        started = time.perf_counter()
        if (settings.out / "irm" / "irm_config.json").is_file() and args.prompts_from:
            from irm.training.run import TrainResult
            from irm.training.rundir import RunDir

            run = RunDir(settings.out)  # the same IRM, other prompts
            result = TrainResult(settings.out, run.irm, json.loads(run.summary.read_text()))
        else:
            result = train(settings.train_config(), overwrite=True, progress=False)
        train_s = time.perf_counter() - started
        host = load_host(settings.host)
        adapter = load_adapter(result.irm_dir, host)
        prompts = read_prompts("builtin:prompts", limit=args.prompts_from + settings.eval_prompts)[args.prompts_from :]
        started = time.perf_counter()
        report = evaluate(host, {"irm": adapter}, prompts, target="anger", strengths=(1.0,), max_new_tokens=settings.max_new_tokens, seed=0)
        eval_s = time.perf_counter() - started
        record = {
            "recipe": name,
            **RECIPES[recipe],
            "prompts_from": args.prompts_from,
            "data": args.data,
            "threads": torch.get_num_threads(),
        }
        record |= {"train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "step_s": round(train_s / settings.max_steps, 2)}
        record["test_loss"] = result.summary.get("test_loss")
        for label, condition in (("host", report.get(HOST)), ("x1", report.get("irm", 1.0))):
            for metric in ("target", "content_kept", "content_kept_median", "distinct_2", "perplexity", "length"):
                record[f"{label}_{metric}"] = [round(v, 4) for v in condition.metrics[metric]]
        record["settings"] = {k: v for k, v in asdict(settings).items() if k not in ("out", "extra")}
        with open(results, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        print(json.dumps(record, default=str), flush=True)


if __name__ == "__main__":
    main()
