"""Fit the emotion scorer's combiner on src/irm/evaluation/scoring_data/train.csv and report its
accuracy on the held-out data/scorer_validation.csv (never used for fitting).

    .venv/bin/python scripts/fit_scorer.py [--c 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from irm.evaluation.scoring import EmotionScorer, SignalExtractor, evaluate_scorer, fit_combiner, scoring_data_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--c", type=float, default=0.5, help="inverse L2 strength of the logistic regression")
    args = parser.parse_args()
    signals = SignalExtractor()
    out = scoring_data_dir() / "combiner.json"
    fit_combiner(scoring_data_dir() / "train.csv", out, c=args.c, signals=signals)
    scorer = EmotionScorer(out, signals=signals)
    train = evaluate_scorer(scorer, scoring_data_dir() / "train.csv")
    val = evaluate_scorer(scorer, ROOT / "data" / "scorer_validation.csv")
    print(json.dumps({"train_accuracy": train["accuracy"], "validation": val}, indent=2))


if __name__ == "__main__":
    main()
