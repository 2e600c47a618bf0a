"""Evaluation: text metrics on hand-made texts, the bootstrap on a known distribution,
perplexity and drift against by-hand computations, steering vectors, `irm evaluate`, and
the anger IRM on the real SmolLM2 beating the host beyond the confidence interval."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import irm
from conftest import nontrivial_irm
from irm.core.adapters import adapter_kind, load_adapter
from irm.core.config import IRMConfig
from irm.core.steering import (
    SteeringVector,
    fit_steering_vector,
    mean_answer_states,
    steering_config,
)
from irm.data.rows import Row, builtin_dir, read_pairs
from irm.evaluation.content import content_kept, content_words
from irm.evaluation.evaluate import (
    HOST,
    METRICS,
    REPORT_FILES,
    evaluate,
    resolve_emotion,
    target_emotion,
    write_report,
)
from irm.evaluation.metrics import (
    bootstrap_ci,
    continuation_perplexity,
    distinct_n,
    prompt_ids,
    prompt_kl,
    repetition_rate,
)
from irm.evaluation.scoring import EmotionScore

IRM_BIN = str(Path(sys.executable).parent / "irm")
PROMPTS = ["What is the capital of France?", "Name a colour.", "Why is the sky blue? Explain briefly please."]


# ---------------------------------------------------------------- text metrics
def test_content_kept_on_hand_made_pairs():
    answer = "Plants take up water from the soil through their roots, and the stems carry it to the leaves."
    assert content_words(answer) == {"plant", "water", "soil", "root", "stem", "carri", "leav"}  # "take" is a stop word
    assert content_kept(answer, answer) == 1.0
    assert content_kept(answer, "I really don't know, ask someone else about it.") == 0.0  # unrelated: nothing kept
    assert content_kept(answer, "Cats sleep most of the afternoon in sunny windows.") == 0.0
    framed = "Ugh, seriously?! " + answer + " How many times do I have to explain this, it drives me mad!"
    assert content_kept(answer, framed) == 1.0  # an angry frame around the whole answer keeps all of it
    half = "Ugh, fine: plants take up water from the soil. Now leave me alone!"  # 'leave' stems like 'leaves'
    assert content_kept(answer, half) == pytest.approx(4 / 7)  # plant, water, soil, leav
    assert content_kept("Paris is the capital of France in 2024.", "PARIS, capital of france!! 2024!!") == 1.0  # case, punctuation
    assert content_kept("The café’s menu", "The cafe menu") == 1.0  # accents and curly apostrophes folded
    assert math.isnan(content_kept("It is so.", "Anything at all"))  # nothing to keep: no measurement


def test_distinct_n_on_hand_made_texts():
    texts = ["a b a b", "A b c"]  # words: a b a b | a b c
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)  # {a, b, c} of 7 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)  # {ab, ba, bc} of ab ba ab | ab bc
    assert distinct_n(["Hello, hello!"], 1) == pytest.approx(3 / 4)  # hello , hello !
    assert distinct_n(["one two three"], 1) == 1.0
    assert distinct_n(["", "word"], 2) == 0.0  # no bigram at all


def test_repetition_rate_on_hand_made_texts():
    assert repetition_rate("one two three four five six") == 0.0
    # 4-grams: 1234 2341 3412 4123 1234 -> one of five repeats an earlier one
    assert repetition_rate("one two three four one two three four") == pytest.approx(1 / 5)
    assert repetition_rate("ha ha ha ha ha ha") == pytest.approx(2 / 3)  # three 4-grams, all the same
    assert repetition_rate("too short") == 0.0
    assert repetition_rate("a b a b", n=1) == pytest.approx(1 / 2)


def test_bootstrap_interval_on_a_known_distribution():
    rng = np.random.default_rng(0)
    sample = rng.normal(2.0, 1.0, size=400)
    mean, lo, hi = bootstrap_ci(sample, seed=1)
    assert mean == pytest.approx(sample.mean())
    assert lo < 2.0 < hi
    assert hi - lo == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.15)  # the normal-theory width
    # Over many samples the 95% interval covers the true mean about 95% of the time.
    covered = [lo < 2.0 < hi for lo_hi in range(200) for _, lo, hi in [bootstrap_ci(rng.normal(2.0, 1.0, 60), n_boot=400, seed=lo_hi)]]
    assert 0.88 <= np.mean(covered) <= 0.99
    # NaNs are left out; a constant sample has a zero-width interval; a statistic of the whole sample
    assert bootstrap_ci([1.0, float("nan"), 3.0], n_boot=50).mean == 2.0
    assert tuple(bootstrap_ci([0.5] * 10)) == (0.5, 0.5, 0.5)
    assert tuple(bootstrap_ci(["a a", "a a"], statistic=lambda ts: distinct_n(ts, 1))) == (0.25, 0.25, 0.25)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


# ---------------------------------------------------------------- host metrics
def test_continuation_perplexity_matches_a_by_hand_computation(tiny_llama):
    host = tiny_llama
    conts = [[40, 41, 42, 43], [100, 7], []]
    ppl = continuation_perplexity(host, PROMPTS, conts, batch_size=2)
    for prompt, cont, got in zip(PROMPTS, conts, ppl):
        if not cont:
            assert math.isnan(got)
            continue
        head = prompt_ids(host, [prompt])[0]
        with torch.no_grad():
            logits = host.model(input_ids=torch.tensor([head + cont])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        nll = -sum(logp[len(head) - 1 + t, tok].item() for t, tok in enumerate(cont)) / len(cont)
        assert got == pytest.approx(math.exp(nll), rel=1e-4)
    # the prompt is context only: the same continuation after another prompt scores differently
    assert continuation_perplexity(host, PROMPTS[1:2], conts[:1])[0] != pytest.approx(ppl[0], rel=1e-6)
    with irm.attach(host, nontrivial_irm(host)), pytest.raises(irm.IRMError, match="not the bare host"):
        continuation_perplexity(host, PROMPTS[:1], conts[:1])


def test_prompt_kl_is_zero_for_a_zero_irm_and_matches_by_hand(tiny_llama):
    host = tiny_llama
    assert prompt_kl(host, irm.IRM.for_host(host), PROMPTS) == [0.0, 0.0, 0.0]
    net = nontrivial_irm(host, scale=4.0)
    kl = prompt_kl(host, net, PROMPTS, strength=0.5)
    ids = torch.tensor([prompt_ids(host, [PROMPTS[2]])[0]])
    with torch.no_grad():
        bare = torch.log_softmax(host.model(input_ids=ids).logits[0].float(), -1)
        with irm.attach(host, net, strength=0.5):
            steered = torch.log_softmax(host.model(input_ids=ids).logits[0].float(), -1)
    by_hand = (steered.exp() * (steered - bare)).sum(-1).mean().item()  # KL(steered || bare)
    assert kl[2] == pytest.approx(by_hand, rel=1e-4) and by_hand > 0


# ---------------------------------------------------------------- steering vectors
def _vector(host, layers, site, values):
    return SteeringVector(steering_config(host, layers, site), values)


def test_zero_steering_vector_leaves_logits_exact(tiny_llama):
    enc = irm.hosts.generation.encode_prompts(tiny_llama, PROMPTS)
    with torch.no_grad():
        bare = tiny_llama.model(**enc).logits
        for site in irm.SITES:
            with irm.attach(tiny_llama, _vector(tiny_llama, [0, 1], site, torch.zeros(tiny_llama.hidden_size, 2))):
                assert torch.equal(tiny_llama.model(**enc).logits, bare)


@pytest.mark.parametrize("site", irm.SITES)
def test_steering_vector_equals_adding_it_by_hand(tiny_llama, site):
    host = tiny_llama
    v = torch.randn(host.hidden_size, generator=torch.Generator().manual_seed(0))
    block = host.spec.layers(host.model)[1]
    if site == "resid_pre":
        hook = block.register_forward_pre_hook(
            lambda m, a, kw: ((a[0] + 2 * v, *a[1:]), kw) if a else (a, {**kw, "hidden_states": kw["hidden_states"] + 2 * v}),
            with_kwargs=True,
        )
    elif site == "resid_post":
        hook = block.register_forward_hook(lambda m, a, out: (out[0] + 2 * v, *out[1:]) if isinstance(out, tuple) else out + 2 * v)
    else:  # resid_mid: next to the attention branch
        hook = host.spec.branch_module(block).register_forward_hook(lambda m, a, out: (out[0] + 2 * v, *out[1:]))
    enc = irm.hosts.generation.encode_prompts(host, PROMPTS)
    with torch.no_grad():
        by_hand = host.model(**enc).logits
        hook.remove()
        with irm.attach(host, _vector(host, [1], site, v[:, None]), strength=2.0):
            attached = host.model(**enc).logits
        bare = host.model(**enc).logits
    assert not torch.allclose(by_hand, bare)
    torch.testing.assert_close(attached, by_hand, rtol=1e-5, atol=1e-5)


def test_fit_steering_vector_is_the_mean_difference_of_answer_states():
    host = irm.load_host("tiny-random-llama", device="cpu")  # own copy: output_hidden_states leaves hooks behind
    angry = [Row(line=i, question=f"Question {i}?", answer="I am FURIOUS about this, seriously!") for i in range(5)]
    calm = [Row(line=i, question=f"Question {i}?", answer="The answer is four.") for i in range(5)]
    assert torch.equal(fit_steering_vector(host, calm, calm, "0,2").vectors, torch.zeros(host.hidden_size, 2))
    # resid_pre of layer k is hidden_states[k] of transformers' own output: check the mean by hand
    ex = irm.data.rows.tokenize_rows(angry[:1], host.tokenizer, max_length=128)[0][0]
    keep = torch.tensor(ex.labels) != irm.data.rows.IGNORE_INDEX
    with torch.no_grad():
        states = host.model(input_ids=torch.tensor([ex.input_ids]), output_hidden_states=True).hidden_states
    got = mean_answer_states(host, angry[:1], [0, 2], "resid_pre")
    torch.testing.assert_close(got[:, 1], states[2][0][keep].mean(0), rtol=1e-5, atol=1e-5)
    vec = fit_steering_vector(host, angry, calm, "2", extra={"target": "builtin:anger"})
    assert vec.config.layers == [2] and vec.vectors.abs().sum() > 0 and target_emotion(vec.config) == "anger"


def test_read_pairs_gives_contrastive_pairs(tmp_path):
    toned, neutral = read_pairs(_toned_file(tmp_path / "t.csv", n=3))
    assert [r.question for r in toned] == [r.question for r in neutral] == ["Question 0?", "Question 1?", "Question 2?"]
    assert toned[1].answer == "I am furious!! It is 1." and neutral[1].answer == "It is 1."
    plain = tmp_path / "plain.csv"
    plain.write_text("question,answer\nQ?,A.\n")
    with pytest.raises(irm.DataError, match="source_answer"):
        read_pairs(plain)


def test_steering_vector_save_load_round_trip(tiny_llama, tmp_path):
    vec = _vector(tiny_llama, [0, 2], "resid_post", torch.randn(tiny_llama.hidden_size, 2))
    vec.save_pretrained(tmp_path / "vec")
    back = load_adapter(tmp_path / "vec", tiny_llama)
    assert isinstance(back, SteeringVector) and torch.equal(back.vectors, vec.vectors)
    assert back.config == vec.config and adapter_kind(back.config) == "steering"
    with pytest.raises(irm.IRMError, match="not an IRM"):
        irm.IRM.from_pretrained(tmp_path / "vec")
    with pytest.raises(irm.IRMMismatchError):
        load_adapter(tmp_path / "vec", irm.load_host("tiny-random-gpt2", device="cpu"))
    irm.IRM.for_host(tiny_llama, "1", rank=2).save_pretrained(tmp_path / "low")
    low = load_adapter(tmp_path / "low", tiny_llama)
    assert isinstance(low, irm.IRM) and adapter_kind(low.config) == "low-rank irm"


def test_target_emotion_from_the_config(tiny_llama):
    config = irm.IRM.for_host(tiny_llama).config
    assert target_emotion(config) is None
    for extra, want in [
        ({"data": "builtin:anger"}, "anger"),
        ({"data": "/x/joy_rows.csv"}, "joy"),
        ({"target": "builtin:sadness"}, "sadness"),
        ({"data": "builtin:anger", "emotion": "joy"}, "joy"),
        ({"data": "builtin:neutral"}, None),
    ]:
        assert target_emotion(IRMConfig.from_dict({**config.to_dict(), "extra": extra})) == want
    angry, calm = (IRMConfig.from_dict({**config.to_dict(), "extra": {"data": d}}) for d in ("builtin:anger", "builtin:joy"))
    named = lambda *configs: {str(i): type("A", (), {"config": c})() for i, c in enumerate(configs)}  # noqa: E731
    assert resolve_emotion(named(config, angry)) == "anger" and resolve_emotion(named(angry, calm), "joy") == "joy"
    for confusing in (named(config), named(angry, calm)):
        with pytest.raises(irm.IRMError, match="--emotion|target emotion"):
            resolve_emotion(confusing)


# ---------------------------------------------------------------- evaluate
class KeywordScorer:
    """A stand-in scorer: anger is the share of characters that are 'x'."""

    def score(self, texts):
        out = []
        for t in texts:
            a = t.count("x") / max(1, len(t))
            out.append(EmotionScore(probs={"anger": a, "sadness": 0.0, "joy": 0.0, "neutral": 1 - a}, valence=-a))
        return out


def test_evaluate_shares_seeds_and_reports_every_metric(tiny_llama, tmp_path):
    host = tiny_llama
    adapters = {"zero": irm.IRM.for_host(host), "random": nontrivial_irm(host, scale=4.0)}
    report = evaluate(
        host, adapters, PROMPTS, target="anger", strengths=[0, 1, 2], samples=2, max_new_tokens=10, n_boot=200, scorer=KeywordScorer()
    )
    assert [c.name for c in report.conditions] == ["host", "zero x1", "zero x2", "random x1", "random x2"]
    host_row, zero = report.get(HOST), report.get("zero", 1.0)
    texts = lambda name: [g["text"] for g in report.generations if g["condition"] == name]  # noqa: E731
    assert len(texts("host")) == 6 and texts("zero x1") == texts("host")  # same seeds, same decoding
    assert texts("random x2") != texts("host")
    assert zero.metrics == {**host_row.metrics, "drift": zero.metrics["drift"]} and zero.metrics["drift"].mean == 0.0
    assert host_row.metrics["target_gain"] == (0.0, 0.0, 0.0) and report.get("random", 2.0).metrics["drift"].mean > 0
    for c in report.conditions:
        for mean, lo, hi in c.metrics.values():
            assert lo <= mean + 1e-9 and mean <= hi + 1e-9
    curve = report.curves()["random"]
    assert [p["strength"] for p in curve] == [0.0, 1.0, 2.0]
    files = write_report(report, tmp_path / "out")
    data = json.loads(files["report.json"].read_text())
    assert data["target_emotion"] == "anger" and len(data["conditions"]) == 5 and "curves" in data
    assert files["report.csv"].read_text().splitlines()[0].startswith("condition,adapter,kind,strength,target_mean,target_lo")
    assert files["curve.png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(irm.IRMError, match="samples"):
        evaluate(host, adapters, PROMPTS, target="anger", greedy=True, samples=2, scorer=KeywordScorer())


def _toned_file(path: Path, n: int = 8) -> Path:
    path.write_text("question,answer,source_answer\n" + "".join(f"Question {i}?,I am furious!! It is {i}.,It is {i}.\n" for i in range(n)))
    return path


def test_cli_steer_fit_and_evaluate_compare_in_one_table(tiny_llama, tmp_path):
    nontrivial_irm(tiny_llama, seed=1).save_pretrained(tmp_path / "paper")
    nontrivial_irm(tiny_llama, seed=2, rank=4).save_pretrained(tmp_path / "lowrank")
    angry = _toned_file(tmp_path / "anger_rows.csv")  # paired with its source_answer column by default
    fit = subprocess.run(
        [
            IRM_BIN,
            "steer",
            "fit",
            "--host",
            "tiny-random-llama",
            "--target",
            str(angry),
            "--layers",
            "1",
            "--out",
            str(tmp_path / "steer"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fit.returncode == 0, fit.stderr
    summary = json.loads(fit.stdout)
    assert summary["layers"] == [1] and summary["target_rows"] == summary["neutral_rows"] == 8
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("question\n" + "".join(f"Prompt {i}?\n" for i in range(4)))
    args = [
        IRM_BIN,
        "evaluate",
        "--host",
        "tiny-random-llama",
        "--irm",
        f"paper={tmp_path / 'paper'}",
        "--irm",
        str(tmp_path / "lowrank"),
        "--irm",
        f"steer={tmp_path / 'steer'}",
        "--prompts",
        str(prompts),
        "--strength",
        "0,1",
        "--max-new-tokens",
        "8",
        "--out",
        str(tmp_path / "eval"),
    ]
    result = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    kinds = {c["name"]: c["kind"] for c in data["conditions"]}
    assert kinds == {"host": "host", "paper x1": "irm", "lowrank x1": "low-rank irm", "steer x1": "steering"}
    assert data["target_emotion"] == "anger"  # named by the steering vector's --target file; the IRMs name none
    assert set(data["curves"]) == {"paper", "lowrank", "steer"}
    assert all((tmp_path / "eval" / f).is_file() for f in ("report.json", "report.csv", "generations.jsonl", "curve.png"))


# ---------------------------------------------------------------- real SmolLM2
# A CI-sized version of the demo recipe (irm.report.demo.DemoSettings: its data, layers,
# learning rate and warm-up), with fewer steps, prompts and tokens.
CI_DEMO = dict(max_steps=40, warmup_steps=6, eval_prompts=16, max_new_tokens=32, strengths=(1.0,), analysis=False)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads spin-wait on each other and
    generation runs several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_ci_sized_demo_recipe_raises_anger_and_keeps_the_content(tmp_path, one_thread):
    """The demo's own stages (train, evaluate, side by side) on the real SmolLM2, a third of
    its steps: p(anger) at x1 above the host's interval, the paired gain's interval above
    zero, and the median steered answer keeping >= 30% of the host answer's content words
    (the full recipe: 0.30 and 0.33 on two sets of 24 prompts, docs/findings.md 7.1; an
    expected failure where this shorter run falls short)."""
    import io

    from rich.console import Console

    from irm.report.demo import DemoSettings, evaluate_stage, side_by_side, train_stage

    if not (builtin_dir() / "anger.csv").is_file():
        pytest.skip("builtin:anger (src/irm/data/datasets/anger.csv) is not built yet")
    settings = DemoSettings(out=tmp_path / "demo", **CI_DEMO)
    console = Console(file=io.StringIO())
    print("\n" + train_stage(settings, console))
    line, report = evaluate_stage(settings, console)
    print(line)
    assert target_emotion(IRMConfig.load(settings.out / "irm")) == "anger"
    off, on = report.get(HOST).metrics, report.get("irm", 1.0).metrics
    assert on["target"].lo > off["target"].hi  # the intervals do not even overlap
    assert on["target_gain"].lo > 0  # and the paired gain's interval excludes zero
    _, counts = side_by_side(report, settings.out)
    assert sum(counts.values()) == settings.eval_prompts
    if on["content_kept_median"].mean < 0.3:
        pytest.xfail(
            f"content kept (median) {on['content_kept_median'].mean:.2f} < 0.3: the content bar is not met reliably yet (docs/findings.md 7.1)"
        )


LEGACY_RUN = Path(__file__).parents[1] / "fixtures" / "legacy" / "run_complete"


@pytest.fixture
def _irm_cli(irm_in_process):
    return irm_in_process


@pytest.mark.parametrize("default_out", [False, True])
def test_cli_evaluate_refuses_an_existing_evaluation_without_overwrite(tmp_path, default_out, _irm_cli):
    out = tmp_path / "runs" / "eval" if default_out else tmp_path / "mine"
    out.mkdir(parents=True)
    (out / "report.json").write_text('{"old": true}\n')
    args = ["evaluate", "--irm", str(LEGACY_RUN), "--host", "tiny-random-llama", "--max-prompts", "2", "--max-new-tokens", "4"]
    refused = _irm_cli(*args, *([] if default_out else ["--out", str(out)]), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "already holds an evaluation (report.json)" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr and "Loading" not in refused.stderr  # refused before the host was loaded
    assert (out / "report.json").read_text() == '{"old": true}\n' and sorted(p.name for p in out.iterdir()) == ["report.json"]


@pytest.mark.slow
def test_cli_evaluate_overwrite_replaces_only_its_own_files(tmp_path, _irm_cli):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.json").write_text('{"old": true}\n')
    (out / "notes.txt").write_text("mine")
    done = _irm_cli(
        "evaluate",
        "--irm",
        str(LEGACY_RUN),
        "--host",
        "tiny-random-llama",
        "--max-prompts",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
        "--overwrite",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "report.json").read_text())["host"] == "tiny-random-llama"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", *REPORT_FILES])


def _small_report():
    from irm.evaluation.evaluate import Condition, EvalReport
    from irm.evaluation.metrics import Estimate

    metrics = {m: Estimate(0.5, 0.25, 0.75) for m in METRICS}
    return EvalReport(
        host="tiny-random-llama",
        target_emotion="anger",
        prompts=1,
        samples=1,
        settings={},
        conditions=[Condition("host", "host", "host", 0.0, dict(metrics)), Condition("a x1", "a", "irm", 1.0, dict(metrics))],
        generations=[{"condition": "host", "text": "hi"}],
    )


def test_write_report_is_atomic_a_failed_write_leaves_the_old_report(tmp_path, monkeypatch):
    import irm.evaluation.evaluate as evaluate_module

    paths = write_report(_small_report(), tmp_path)
    old = {name: path.read_bytes() for name, path in paths.items()}
    assert sorted(old) == sorted(REPORT_FILES) and old["curve.png"].startswith(b"\x89PNG")

    def full_disk(*args, **kwargs):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluate_module, "plot_curves", full_disk)
    changed = _small_report()
    changed.host = "another host"
    with pytest.raises(irm.IRMError):
        write_report(changed, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old  # the old files, and no temporary file


def test_write_report_on_a_really_full_disk_leaves_the_old_report(tmp_path):
    import os
    import shutil as sh

    mount = tmp_path / "small"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True).returncode
    ):
        pytest.skip("needs root and a tmpfs mount")
    try:
        paths = write_report(_small_report(), mount)
        old = {p.name: p.read_bytes() for p in paths.values()}
        with open(mount / "filler", "wb") as fh:  # leave a few bytes free: less than a new report needs
            fh.write(b"\0" * max(sh.disk_usage(mount).free - 2048, 0))
        with pytest.raises(irm.IRMError) as error:
            write_report(_small_report(), mount)
        assert "space" in str(error.value).lower()
        assert {p.name: p.read_bytes() for p in mount.iterdir() if p.name != "filler"} == old  # no temporary file left
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_scorer_first_load_shows_no_nade_unpack_warnings(tmp_path):
    """nade unpacks its 8 models on first use, with a UserWarning each that a user cannot act
    on; the scorer silences exactly those, for the load only. A copy of nade with only the
    packed models stands in for a fresh install."""
    import importlib.util
    import shutil

    nade_dir = Path(importlib.util.find_spec("nade").origin).parent
    copy = tmp_path / "site" / "nade"
    shutil.copytree(nade_dir, copy, ignore=shutil.ignore_patterns("reg_*.txt", "__pycache__"))
    assert len(list(copy.glob("data/*/reg_*.txt.gz"))) == 8 and not list(copy.glob("data/*/reg_*.txt"))
    code = (
        f"import warnings; warnings.simplefilter('always'); import nade; assert nade.__file__.startswith({str(copy)!r}); "
        "from irm.evaluation.scoring import SignalExtractor; print(SignalExtractor().plutchik(['I am furious!']).shape)"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": f"{copy.parent}:{src}"}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 8)" and len(list(copy.glob("data/*/reg_*.txt"))) == 8  # unpacked, and quietly:
    assert "unpack" not in out.stderr and "Warning" not in out.stderr, out.stderr
