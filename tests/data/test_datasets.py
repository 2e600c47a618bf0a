"""Datasets: the validated scorer, the shipped sets' quality, the synthesizer end to end,
and `irm data check`."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from irm.data.rows import builtin_dir, check_data, read_rows
from irm.data.synthesis import (
    SynthesisConfig,
    content_words,
    facts_kept,
    near_duplicate_rate,
    synthesize,
)
from irm.evaluation.scoring import (
    LABELS,
    EmotionScorer,
    evaluate_scorer,
    scoring_data_dir,
)

ROOT = Path(__file__).resolve().parents[2]
EMOTIONS = ("anger", "sadness", "joy", "neutral")
IRM_BIN = str(Path(sys.executable).parent / "irm")


@pytest.fixture(scope="module")
def scorer():
    return EmotionScorer()


@pytest.mark.slow
def test_scorer_meets_the_bar_on_held_out_validation(scorer):
    report = evaluate_scorer(scorer, ROOT / "data" / "scorer_validation.csv")
    assert report["rows"] >= 200
    assert report["accuracy"] >= 0.80, report
    assert all(r >= 0.70 for r in report["recall"].values()), report["recall"]


def test_validation_set_is_balanced_and_disjoint_from_training():
    val = pd.read_csv(ROOT / "data" / "scorer_validation.csv")
    train = pd.read_csv(scoring_data_dir() / "train.csv")
    assert set(val.label) == set(LABELS) and val.label.value_counts().min() >= 50
    norm = lambda s: " ".join(str(s).lower().split())  # noqa: E731
    assert not set(map(norm, val.text)) & set(map(norm, train.text))


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_shipped_set_rows_and_columns(emotion):
    frame = pd.read_csv(builtin_dir() / f"{emotion}.csv")
    assert len(frame) >= 2000
    for col in ("question", "answer", "origin", "top", "margin", "p_anger", "p_sadness", "p_joy", "p_neutral", "valence", "facts_kept"):
        assert col in frame.columns
    assert frame.origin.notna().all() and (frame.answer.str.len() > 0).all()
    assert len(read_rows(f"builtin:{emotion}")) == len(frame)


@pytest.mark.slow
@pytest.mark.parametrize("emotion", EMOTIONS)
def test_shipped_set_quality_recomputed_on_a_sample(emotion, scorer):
    frame = pd.read_csv(builtin_dir() / f"{emotion}.csv")
    sample = frame.sample(n=150, random_state=0)
    tops = [s.top for s in scorer.score(sample.answer.tolist())]
    assert sum(t == emotion for t in tops) / len(tops) >= 0.70
    kept = [facts_kept(n, t) for n, t in zip(sample.source_answer, sample.answer)]
    assert sorted(kept)[len(kept) // 2] >= 0.5
    assert near_duplicate_rate(frame.answer.tolist()) <= 0.01


def test_prompts_are_held_out_from_every_training_set():
    frame = pd.read_csv(builtin_dir() / "prompts.csv")
    prompts = {" ".join(q.lower().split()) for q in frame.question}
    assert len(prompts) >= 100
    for emotion in EMOTIONS:
        questions = {" ".join(str(q).lower().split()) for q in pd.read_csv(builtin_dir() / f"{emotion}.csv").question}
        assert not prompts & questions


def test_facts_kept_and_near_duplicates():
    assert facts_kept("Paris is the capital of France.", "Ugh. Paris is the capital of France, obviously!") == 1.0
    assert facts_kept("Paris is the capital of France.", "I love cats.") == 0.0
    assert content_words("The cat sat on the mat") == {"cat", "sat", "mat"}
    texts = [f"sentence number {i} about a different topic entirely {i * 7}" for i in range(100)]
    assert near_duplicate_rate(texts) == 0.0
    assert near_duplicate_rate(texts + [texts[3].upper()]) == pytest.approx(1 / 101)


@pytest.mark.slow
def test_synthesizer_with_real_smollm2_resumes(tmp_path, scorer):
    rows = read_rows(_qa_file(tmp_path))[:3]
    config = SynthesisConfig(emotion="joy", method="rewrite", candidates=2, batch_size=1, max_new_tokens=40, margin=0.0)
    out = tmp_path / "joy.jsonl"

    class Interrupt(Exception):
        pass

    def stop_after_first(done, total):
        if done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        synthesize(config, out, rows=rows, scorer=scorer, progress=stop_after_first)
    partial = out.with_name(out.name + ".partial.jsonl")
    assert partial.is_file() and len(partial.read_text().splitlines()) == 1 and not out.exists()
    seen = []
    provenance = synthesize(config, out, rows=rows, scorer=scorer, progress=lambda d, t: seen.append(d))
    assert seen == [2, 3]  # the first row was not generated again
    assert provenance["source_rows"] == 3 and provenance["kept"] + provenance["dropped"] == 3
    assert not partial.exists()
    saved = json.loads(out.with_name(out.name + ".provenance.json").read_text())
    assert saved["config"]["generator"] == "smollm2-135m-instruct" and "prompt_template" in saved
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["origin"] == "rewrite:smollm2-135m-instruct" and r["top"] == "joy" for r in kept)


def test_framing_synthesis_keeps_facts(tmp_path, scorer):
    rows = read_rows(_qa_file(tmp_path))
    provenance = synthesize(SynthesisConfig(emotion="anger", method="framing", candidates=4), tmp_path / "a.csv", rows=rows, scorer=scorer)
    frame = pd.read_csv(tmp_path / "a.csv")
    assert provenance["kept"] == len(frame) >= len(rows) // 2
    assert (frame.top == "anger").all() and (frame.facts_kept == 1.0).all()


def _qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.csv"
    pd.DataFrame(
        {
            "question": ["What is water made of?", "How far is the Moon?", "What is a prime number?", "Who painted the Mona Lisa?"],
            "answer": [
                "Water is made of hydrogen and oxygen.",
                "The Moon is about 384,000 kilometres from Earth.",
                "A prime number has exactly two divisors: one and itself.",
                "Leonardo da Vinci painted the Mona Lisa.",
            ],
        }
    ).to_csv(path, index=False)
    return path


def test_data_check_good_and_bad_files(tmp_path, tiny_llama):
    good = _qa_file(tmp_path)
    report = check_data(good, tiny_llama.tokenizer, max_length=40)
    assert report.ok and report.rows == 4 and report.token_lengths["max"] > 40
    assert any("longer than 40 tokens" in w for w in report.warnings)
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nQ1,A1\n,A2\nQ1,A1\nQ3,\n")
    report = check_data(bad)
    assert not report.ok
    assert any("line(s) 3, 5" in e for e in report.errors)
    assert any("duplicate" in w and "4" in w for w in report.warnings)
    result = subprocess.run([IRM_BIN, "data", "check", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2 and "3, 5" in result.stdout
    result = subprocess.run([IRM_BIN, "data", "check", str(good), "--json"], capture_output=True, text=True)
    assert result.returncode == 0 and json.loads(result.stdout)["ok"] is True
