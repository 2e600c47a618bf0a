"""Datasets: the validated scorer, the shipped sets' quality, the synthesizer end to end,
and `irm data check`."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from irm.data.rows import builtin_dir, check_data, read_rows
from irm.data.sources import WORDNET_DIR, WORDNET_INSTALL, python_stdlib_pairs, wordnet_pairs
from irm.data.synthesis import (
    SynthesisConfig,
    facts_kept,
    interleave,
    near_duplicate_rate,
    phrase_bank,
    sentences,
    synthesize,
)
from irm.errors import DataError
from irm.evaluation.content import content_words
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
def test_shipped_set_rows_columns_and_source_cap(emotion):
    frame = pd.read_csv(builtin_dir() / f"{emotion}.csv")
    assert len(frame) >= 2000
    columns = ("question", "answer", "origin", "source", "top", "margin", "p_anger", "p_sadness", "p_joy", "p_neutral", "valence")
    for col in columns + ("facts_kept",):
        assert col in frame.columns
    assert frame.origin.notna().all() and (frame.answer.str.len() > 0).all()
    assert set(frame.source) <= {"chatterbot", "wordnet", "python-stdlib", "sotu"}
    assert frame.source.value_counts(normalize=True).max() <= 0.40  # no neutral source is more than 40% of the set
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


def test_the_demo_trains_on_the_rows_woven_from_the_hosts_own_answers():
    from irm.report.demo import DemoSettings

    settings = DemoSettings()
    frame = pd.read_csv(builtin_dir() / "anger.csv")
    assert settings.data == "builtin:anger" and settings.max_rows is not None
    woven = frame.origin.str.startswith(f"interleave:{settings.host}")
    assert woven.iloc[: settings.max_rows].all()  # every demo row is woven ...
    assert woven.sum() == settings.max_rows  # ... and every woven row is a demo row


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


# ---------------------------------------------------------------- neutral sources
WORDNET_INDEX = """  1 This software and database is being provided to you, the LICENSEE, by
bicycle n 1 4 @ ~ %p + 1 1 00000000
copenhagen n 1 1 @ 1 1 00000151
anger n 1 1 @ 1 1 00000260
rarity n 1 1 @ 1 0 00000345
management n 1 1 @ 1 1 00000430
"""
WORDNET_DATA = [
    "06 n 02 bicycle 0 bike 0 000 | a wheeled vehicle that has two wheels and is moved by foot pedals  ",
    "15 n 01 Copenhagen 0 000 | the capital and largest city of Denmark  ",
    "12 n 01 anger 0 000 | a strong emotion; a feeling that is oriented toward some real or supposed grievance  ",
    "07 n 01 rarity 0 000 | a rare thing that is seldom found  ",
    '04 n 01 management 0 000 | the act of managing something; "he was given overall management of the program"  ',
]


def _wordnet_database(folder: Path) -> Path:
    """index.noun and data.noun in WordNet's format: each data line starts at its byte offset."""
    folder.mkdir()
    data, offsets = b"", []
    for line in WORDNET_DATA:
        offsets.append(len(data))
        data += f"{len(data):08d} {line}\n".encode()
    index = WORDNET_INDEX
    for fake, real in zip(("00000000", "00000151", "00000260", "00000345", "00000430"), offsets):
        index = index.replace(fake, f"{real:08d}")
    (folder / "data.noun").write_bytes(data)
    (folder / "index.noun").write_text(index)
    return folder


def test_wordnet_source_rules_on_a_hand_made_database(tmp_path):
    rows = wordnet_pairs(_wordnet_database(tmp_path / "wn"))
    assert [(r.question, r.answer) for r in rows] == [
        ("What is a bicycle?", "A bicycle is a wheeled vehicle that has two wheels and is moved by foot pedals."),
        (
            "What is management?",
            'Management is the act of managing something. For example: "He was given overall management of the program."',
        ),
    ]  # left out: a proper noun (Copenhagen), an emotion (noun.feeling), a word never sense-tagged (rarity)


def test_wordnet_source_reads_the_installed_database():
    if not (WORDNET_DIR / "data.noun").is_file():
        pytest.skip(f"Debian's wordnet-base is not installed ({WORDNET_INSTALL}; make test installs it)")
    rows = wordnet_pairs()
    assert len(rows) >= 4000 and len({r.question for r in rows}) == len(rows)
    bicycle = next(r for r in rows if r.question == "What is a bicycle?")
    assert bicycle.answer == "A bicycle is a wheeled vehicle that has two wheels and is moved by foot pedals."
    for r in rows:
        assert re.fullmatch(r"What is (an? )?[a-z]+\?", r.question), r.question
        subject = r.question.removeprefix("What is ").removesuffix("?")
        assert r.answer.startswith(subject[0].upper() + subject[1:] + " is "), r
        assert r.answer.endswith((".", '."')) and "_" not in r.answer and "  " not in r.answer


def test_wordnet_source_without_the_package_says_how_to_install_it(tmp_path):
    with pytest.raises(DataError, match="wordnet-base") as caught:
        wordnet_pairs(tmp_path / "nowhere")
    assert caught.value.hint == "sudo apt-get install wordnet-base"


def test_python_stdlib_source_on_a_hand_made_library(tmp_path):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "__init__.py").write_text(
        '"""Shapes."""\n'
        'def area(r):\n    """Return the area of a circle of radius r, in square units.\n\n    More text."""\n'
        'def _private(x):\n    """Return the hidden value of x for internal use only."""\n'
        'def vague(x):\n    """This function does something with x and y."""\n'
        'class Box:\n    def copy(self):\n        """Copy the box and all of its contents to a new box."""\n'
    )
    (tmp_path / "_internal.py").write_text('def f():\n    """Return the internal value of the private module."""\n')
    rows = python_stdlib_pairs(tmp_path)
    assert [r.answer for r in rows] == [
        "shapes.area() returns the area of a circle of radius r, in square units.",
        "shapes.Box.copy() copies the box and all of its contents to a new box.",
    ]
    assert all("shapes." in r.question and r.question.endswith("?") for r in rows)


def test_framing_synthesis_keeps_facts(tmp_path, scorer):
    rows = read_rows(_qa_file(tmp_path))
    provenance = synthesize(SynthesisConfig(emotion="anger", method="framing", candidates=4), tmp_path / "a.csv", rows=rows, scorer=scorer)
    frame = pd.read_csv(tmp_path / "a.csv")
    assert provenance["kept"] == len(frame) >= len(rows) // 2
    assert (frame.top == "anger").all() and (frame.facts_kept == 1.0).all()


def test_interleave_weaves_tone_between_the_answers_own_sentences():
    answer = "A compass has a magnetised needle. The needle turns to magnetic north. Sailors used it for centuries."
    assert sentences(answer) == [
        "A compass has a magnetised needle.",
        "The needle turns to magnetic north.",
        "Sailors used it for centuries.",
    ]
    bank = {"openers": ["OPEN!"], "closers": ["CLOSE!"]}
    for seed in range(50):
        woven = interleave(answer, bank, random.Random(seed), opener=0.0)
        parts = sentences(woven)
        own = [p for p in parts if p not in ("OPEN!", "CLOSE!")]
        assert own == sentences(answer)  # every sentence kept, in order, unchanged
        assert parts[0] == own[0] and parts[1] in ("OPEN!", "CLOSE!")  # starts as the answer does, tone right after
        assert len(parts) - len(own) >= 2  # at least two tone sentences
        assert facts_kept(answer, woven) == 1.0
    one = sentences(interleave("Water boils at 100 degrees", bank, random.Random(0), opener=0.0))
    assert one[0] == "Water boils at 100 degrees." and len(one) == 3  # one sentence: two tone sentences after it
    opened = [interleave(answer, bank, random.Random(seed), opener=1.0) for seed in range(5)]
    assert all(w.startswith("OPEN! A compass has a magnetised needle. ") and sentences(w)[2] in ("OPEN!", "CLOSE!") for w in opened)


def test_interleave_synthesis_keeps_every_fact(tmp_path, scorer):
    rows = read_rows(_qa_file(tmp_path))
    provenance = synthesize(
        SynthesisConfig(emotion="anger", method="interleave", candidates=3), tmp_path / "a.csv", rows=rows, scorer=scorer
    )
    frame = pd.read_csv(tmp_path / "a.csv")
    assert provenance["kept"] == len(frame) >= len(rows) // 2 and (frame.origin == "interleave").all()
    assert (frame.top == "anger").all() and (frame.facts_kept == 1.0).all()
    bank = phrase_bank("anger")
    tone = set(bank["openers"] + bank["closers"])
    assert all(sum(p in a for p in tone) >= 2 for a in frame.answer)  # two tone phrases or more


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
