"""Inside the IRM: recording, striation, dominant indices, host outliers, heatmaps, ablation."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import irm
from conftest import nontrivial_irm
from irm import cli
from irm.analysis import statistics as A
from irm.analysis.heatmaps import heatmap_figure, pool_columns, save_heatmap
from irm.analysis.outliers import host_outlier_dims
from irm.analysis.pipeline import AnalyzeOptions, analyze
from irm.analysis.recording import load_recording, record, save_recording
from irm.evaluation.ablation import ablate, zero_indices
from irm.hosts.generation import encode_prompts

PROMPTS = ["Hi", "What is the capital of France?", "Name a colour, please."]


# ------------------------------------------------------------------ numbers on known arrays


def test_striation_is_one_for_stripes_and_zero_for_layers():
    rng = np.random.default_rng(0)
    by_index, by_layer = rng.random(77), rng.random(5)
    stripes = np.tile(by_index, (5, 1))
    layers = np.tile(by_layer[:, None], (1, 77))
    assert A.striation(stripes).score == pytest.approx(1.0)
    assert A.striation(layers).score == pytest.approx(0.0, abs=1e-12)
    assert A.striation(layers).layer_share == pytest.approx(1.0)
    mixed = A.striation(stripes + layers)
    assert mixed.score + mixed.layer_share == pytest.approx(1.0) and mixed.residual_share == pytest.approx(0, abs=1e-9)
    noise = A.striation(rng.random((8, 500)))
    assert noise.score == pytest.approx(noise.noise_level, abs=0.05) and noise.score < 0.2
    assert A.striation(np.ones((3, 4))).score == 0.0
    stack = np.stack([stripes, layers, stripes + layers])
    assert np.allclose(A.striation_scores(stack), [1.0, 0.0, mixed.score])


def test_top_k_overlap_and_rank_correlation_on_known_profiles():
    profile = np.array([1.0, 5.0, 0.0, 3.0, 1.0])
    top = A.top_k(profile, 2)
    assert top.indices == [1, 3] and top.shares == pytest.approx([0.5, 0.3]) and top.total_share == pytest.approx(0.8)
    assert A.top_k(profile, 3).indices == [1, 3, 0]  # ties: lower index first
    assert A.jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(0.5)
    assert A.spearman(np.arange(6.0), np.arange(6.0) ** 3) == pytest.approx(1.0)
    assert A.spearman(np.arange(6.0), -np.arange(6.0)) == pytest.approx(-1.0)
    assert A.spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 3, 4])) == pytest.approx(0.9486833)
    assert list(A.average_ranks(np.array([10.0, 20, 20, 5]))) == [2.0, 3.5, 3.5, 1.0]
    runs = {"a": np.array([0, 9, 1, 5.0]), "b": np.array([0, 8, 6, 1.0]), "c": np.array([7, 1, 0, 0.5])}
    assert A.most_often_first(list(runs.values())) == (1, 2)
    report = A.consistency(runs, 2)
    assert report["top_k"] == {"a": [1, 3], "b": [1, 2], "c": [0, 1]}
    assert report["most_often_first"] == {"index": 1, "runs": 2, "of": 3}
    ab = report["pairs"][0]
    assert (ab["a"], ab["b"], ab["shared"]) == ("a", "b", [1]) and ab["jaccard"] == pytest.approx(1 / 3)
    assert report["top_k_counts"][0] == {"index": 1, "runs": 3}


def test_sparsity_on_known_vectors():
    one_hot, flat = np.eye(1, 100)[0], np.ones(100)
    assert A.hoyer(one_hot) == pytest.approx(1.0) and A.hoyer(flat) == pytest.approx(0.0)
    assert A.hoyer(np.zeros(10)) == 0.0
    assert A.top_fraction_share(flat, 0.01) == pytest.approx(0.01)
    assert A.top_fraction_share(-3 * one_hot, 0.01) == pytest.approx(1.0)
    x = np.array([4.0, -1, 1, 1, 1])  # largest 20% = one value of 8 in total
    assert A.top_fraction_share(x, 0.2) == pytest.approx(0.5)
    stats = A.per_token_stats(np.stack([one_hot.reshape(4, 25), flat.reshape(4, 25)]))
    assert stats["hoyer"] == pytest.approx([1.0, 0.0]) and stats["l2"] == pytest.approx([1.0, 10.0])


def test_coincidence_against_chance():
    signal = np.zeros(100)
    signal[[7, 42, 99]] = [50.0, 30.0, 10.0]
    c = A.coincidence([42, 3, 7], signal, 3)
    assert c["host_top_k"] == [7, 42, 99] and c["shared"] == [7, 42] and c["overlap"] == 2
    assert c["expected_by_chance"] == pytest.approx(0.09) and c["irm_index_ranks_in_host"][42] == 2
    assert A.coincidence([1], np.ones(10), 1)["constant"]


# ------------------------------------------------------------------ heatmaps


def test_heatmap_axes_for_an_odd_non_square_hidden_size(tmp_path):
    layers = [2, 3, 5, 7, 11]
    values = np.random.default_rng(0).random((5, 77))
    fig = heatmap_figure(values, layers, title="odd")
    ax = fig.axes[0]
    assert ax.get_xlim() == (-0.5, 76.5) and ax.get_ylim() == (-0.5, 4.5)
    assert ax.images[0].get_extent() == [-0.5, 76.5, -0.5, 4.5]
    assert ax.images[0].get_array().shape == (5, 77)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "3", "5", "7", "11"]
    assert list(ax.get_yticks()) == [0, 1, 2, 3, 4]
    shown = [t for t in ax.get_xticks() if -0.5 <= t <= 76.5]
    assert shown[0] == 0 and all(float(t).is_integer() for t in shown) and 4 <= len(shown) <= 13
    assert ax.get_xlabel().startswith("hidden index") and ax.get_ylabel() == "layer"
    path = save_heatmap(values, layers, tmp_path / "h.png", title="odd")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    wide = np.zeros((3, 4099))
    wide[:, 1512] = -9.0
    pooled = pool_columns(wide)
    assert pooled.shape == (3, 684) and (pooled[:, 1512 // 6] == -9.0).all()  # one stripe survives pooling


# ------------------------------------------------------------------ recording round trip


def _recorded_equals_direct(host, net, rec):
    for i in range(len(rec.prompts)):
        ids = torch.tensor([[t.id for t in rec.tokens if t.prompt == i]])
        direct = irm.irm_output(host, net, input_ids=ids)[0].transpose(1, 2).numpy()  # (token, layer, hidden)
        assert np.allclose(rec.prompt_outputs(i).astype(np.float32), direct, atol=2e-3, rtol=2e-3)


def test_record_then_analyze_round_trip(tiny_llama, tmp_path):
    host, net = tiny_llama, nontrivial_irm(tiny_llama, "1,3", scale=4.0)
    rec = record(host, net, PROMPTS, max_new_tokens=6, batch_size=3)
    enc = encode_prompts(host, PROMPTS)
    lengths = enc["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 1, "prompts of different lengths, so the batch has left padding"
    with irm.attach(host, net):
        plain = irm.generate(host, PROMPTS, max_new_tokens=6)
    assert rec.texts == [g.text for g in plain]
    for i, n in enumerate(lengths):
        kinds = [t.kind for t in rec.tokens if t.prompt == i]
        fed = min(len(plain[i].token_ids), 5)  # the last generated token is never fed back
        assert kinds == ["prompt"] * n + ["generated"] * fed
        assert [t.position for t in rec.tokens if t.prompt == i] == list(range(n + fed))
        assert [t.id for t in rec.tokens if t.prompt == i][n:] == plain[i].token_ids[:fed]
    assert rec.outputs.shape == (len(rec.tokens), 2, 64) and rec.outputs.dtype == np.float16
    assert host.tokenizer.pad_token_id not in [t.id for t in rec.tokens]
    _recorded_equals_direct(host, net, rec)

    save_recording(rec, tmp_path / "rec")
    loaded = load_recording(tmp_path / "rec")
    assert isinstance(loaded.outputs, np.memmap) and np.array_equal(loaded.outputs, rec.outputs)
    assert loaded.tokens == rec.tokens and list(loaded.offsets) == list(rec.offsets) and loaded.layers == [1, 3]
    assert json.loads((tmp_path / "rec" / "meta.json").read_text())["dtype"] == "float16"

    options = AnalyzeOptions(k=4, token_plots=2, frames=3, neutral_limit=2)
    summary = analyze([tmp_path / "rec"], tmp_path / "out", options)
    out = tmp_path / "out"
    for name in ("summary.json", "heatmap_mean.png", "animation.gif", "host_outliers.json", "per_token.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("heatmap_token_*.png"))) == 2
    assert summary["tokens"] == len(rec.tokens) and summary["layers"] == [1, 3]
    profile = A.index_profile(A.mean_abs_map(rec.outputs))
    assert summary["top_k"]["indices"] == A.top_k(profile, 4).indices
    assert 0 <= summary["striation"]["score"] <= 1 and set(summary["coincidence_with_host"]) == {
        "residual_max_abs",
        "final_norm_gain",
        "lm_head_column_norm",
    }
    assert np.load(out / "mean_abs_map.npy").shape == (2, 64)


def test_cli_record_analyze_ablate(tiny_llama, tmp_path, monkeypatch, capsys):
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["irm", *map(str, args)])
        try:
            cli.main()
        except SystemExit as exc:
            return exc.code, capsys.readouterr()
        return 0, capsys.readouterr()

    nontrivial_irm(tiny_llama, seed=1).save_pretrained(tmp_path / "runA" / "irm")
    nontrivial_irm(tiny_llama, seed=2).save_pretrained(tmp_path / "runB" / "irm")
    code, out = run("record", "--irm", tmp_path / "runA", "--out", tmp_path / "recA", "--limit", 2, "--max-new-tokens", 3, "--json")
    assert code == 0 and json.loads(out.out)["prompts"] == 2
    code, out = run(
        "analyze",
        tmp_path / "recA",
        tmp_path / "runB",
        "--out",
        tmp_path / "an",
        "--limit",
        2,
        "--max-new-tokens",
        3,
        "--frames",
        0,
        "--token-plots",
        1,
        "--no-host-outliers",
        "--k",
        3,
        "--json",
    )
    assert code == 0, out.err
    assert (tmp_path / "runB" / "record" / "meta.json").is_file()  # the run dir was recorded first
    consistency = json.loads((tmp_path / "an" / "consistency.json").read_text())
    assert consistency["tiny-random-llama (hidden 64)"]["runs"] == ["recA", "runB"]
    assert (tmp_path / "an" / "recA" / "heatmap_mean.png").is_file() and (tmp_path / "an" / "runB" / "summary.json").is_file()
    code, out = run(
        "ablate",
        "--irm",
        tmp_path / "runA",
        "--indices",
        "3,5",
        "--limit",
        2,
        "--draws",
        1,
        "--max-new-tokens",
        3,
        "--no-emotion",
        "--json",
    )
    assert code == 0 and json.loads(out.out)["indices"] == [3, 5]
    code, out = run("ablate", "--irm", tmp_path / "runA", "--indices", "3,99", "--no-emotion")
    assert code == 2 and "99" in out.err and "auto" in out.err


# ------------------------------------------------------------------ ablation


def test_ablation_zeroes_exactly_the_chosen_indices(tiny_llama):
    net = nontrivial_irm(tiny_llama, "0,2,3")
    enc = encode_prompts(tiny_llama, PROMPTS)
    plain, ablated = [], []
    chosen = [5, 17, 63]
    with torch.no_grad():
        with irm.attach(tiny_llama, net, on_output=plain.append):
            tiny_llama.model(**enc)
        with irm.attach(tiny_llama, net, on_output=ablated.append, transform=zero_indices(chosen)):
            logits = tiny_llama.model(**enc).logits
    before, after = plain[0], ablated[0]
    assert after.shape == before.shape == (3, enc["input_ids"].shape[1], 64, 3)
    assert (after[:, :, chosen, :] == 0).all() and (before[:, :, chosen, :] != 0).all()
    keep = [i for i in range(64) if i not in chosen]
    assert torch.equal(after[:, :, keep, :], before[:, :, keep, :])
    with (
        torch.no_grad(),
        irm.attach(tiny_llama, net, transform=lambda o: o * torch.tensor([0.0 if i in chosen else 1.0 for i in range(64)])[:, None]),
    ):
        assert torch.allclose(tiny_llama.model(**enc).logits, logits)  # the zeroed output is what gets injected


class _FakeScorer:
    """Probability of 'anger' = share of texts' characters that are vowels (deterministic)."""

    def score(self, texts):
        class S:
            def __init__(self, p):
                self.probs = {"anger": p, "neutral": 1 - p}

        return [S(sum(c in "aeiou" for c in t) / max(len(t), 1)) for t in texts]


def test_ablate_reports_against_random_indices(tiny_llama):
    net = nontrivial_irm(tiny_llama, scale=4.0)
    report = ablate(tiny_llama, net, [4, 9], PROMPTS[:2], draws=2, max_new_tokens=4, scorer=_FakeScorer(), target="anger")
    assert report["indices"] == [4, 9] and len(report["random"]) == 2
    for draw in report["random"]:
        assert len(draw["indices"]) == 2 and not set(draw["indices"]) & {4, 9}
    assert set(report["irm"]) == {"mean_tokens", "distinct_2", "p_anger", "p_neutral"}
    assert report["change_ablated"]["p_anger"] == pytest.approx(report["ablated"]["p_anger"] - report["irm"]["p_anger"])
    assert report["target"] == "anger" and len(report["effect_removed_random"]) == 2
    with pytest.raises(irm.IRMError):
        ablate(tiny_llama, net, [64], PROMPTS[:1])


# ------------------------------------------------------------------ host outliers


def test_host_outlier_dims_on_tiny_llama(tiny_llama):
    found = host_outlier_dims(tiny_llama, ["The quick brown fox.", "Hello there"])
    assert found.residual_by_layer.shape == (4, 64) and (found.residual_by_layer > 0).all()
    assert found.final_norm_gain.shape == (64,) and found.lm_head_column_norm.shape == (64,)
    head = tiny_llama.model.lm_head.weight
    assert np.allclose(found.lm_head_column_norm, head.norm(dim=0).numpy())
    report = found.to_dict(3)
    assert len(report["residual_max_abs"]["top_k"]) == 3 and len(report["residual_top_index_per_layer"]) == 4


def test_host_outlier_dims_finds_planted_dimensions():
    host = irm.load_host("tiny-random-llama", device="cpu")  # a private copy to edit
    with torch.no_grad():
        host.model.model.embed_tokens.weight[:, 7] = 300.0  # a massive residual dimension
        host.model.model.norm.weight[13] = 40.0
        host.model.lm_head.weight[:, 21] *= 100.0
    found = host_outlier_dims(host, ["Some neutral text."])
    signals = found.signals()
    assert A.top_k(signals["residual_max_abs"], 1).indices == [7]
    assert (found.residual_by_layer.argmax(axis=1) == 7).all()
    assert A.top_k(signals["final_norm_gain"], 1).indices == [13]
    assert A.top_k(signals["lm_head_column_norm"], 1).indices == [21]
    assert found.to_dict(1)["residual_max_abs"]["ratio_to_median"][0] > 50


@pytest.mark.slow
def test_smollm2_recording_round_trip(smollm2, tmp_path):
    net = nontrivial_irm(smollm2, "2,5", scale=0.05)
    rec = record(smollm2, net, ["What is the capital of France?", "Hi"], max_new_tokens=5, batch_size=2)
    assert rec.outputs.shape[1:] == (2, 576)
    _recorded_equals_direct(smollm2, net, rec)
    summary = analyze([save_recording(rec, tmp_path / "rec")], tmp_path / "out", AnalyzeOptions(k=5, frames=2, neutral_limit=2))
    assert summary["hidden_size"] == 576 and len(summary["top_k"]["indices"]) == 5


def test_residual_gradients_equal_finite_differences_of_the_loss():
    """The zero-probe gradient at (index i, layer l) is d loss / d h_l[i] summed over positions:
    adding eps at index i of layer l at every position changes the loss by eps times it
    (central differences on the full-logits loss)."""
    from irm.analysis.gradients import residual_gradients
    from irm.core.steering import SteeringVector, steering_config
    from irm.data.rows import Row, collate, tokenize_rows

    host = irm.load_host("tiny-random-llama", device="cpu")
    host.model.double()
    rows = [Row(line=1, question="a?", answer="bcd efg"), Row(line=2, question="e?", answer="fgh ijk lmn")]
    layers = [0, 2, 3]
    found = residual_gradients(host, rows, layers, batch_size=1)
    assert found.gradients.shape == (64, 3) and found.tokens > 0
    batch = collate(tokenize_rows(rows, host.tokenizer, max_length=128)[0], host.tokenizer.pad_token_id)

    def loss_with(index: int, column: int, eps: float) -> float:
        vec = SteeringVector(steering_config(host, layers, "resid_mid"))
        with torch.no_grad():
            vec.vectors.data = vec.vectors.data.double()
            vec.vectors[index, column] = eps
        with torch.no_grad(), irm.attach(host, vec):  # in float64 throughout (the training loss's head is float32)
            logits = host.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"))

    for index, column in ((5, 0), (17, 1), (63, 2)):
        eps = 3e-4  # LlamaRMSNorm computes in float32 even in a float64 model: smaller steps drown in its rounding
        numeric = (loss_with(index, column, eps) - loss_with(index, column, -eps)) / (2 * eps)
        assert found.gradients[index, column] == pytest.approx(numeric, rel=1e-3, abs=1e-6)
    summary = found.summary(k=3)
    assert len(summary["top_indices"]) == 3 and -1 <= summary["mean_cosine_between_layers"] <= 1


def test_analyze_compares_with_host_gradients(tiny_llama, tmp_path, monkeypatch, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"answer number {i} is here"}) + "\n" for i in range(6)))
    net = nontrivial_irm(tiny_llama, "0,2,3", seed=3)
    net.config.extra["data"] = str(data)
    net.save_pretrained(tmp_path / "run" / "irm")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "irm",
            "analyze",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "an"),
            "--limit",
            "2",
            "--max-new-tokens",
            "3",
            "--frames",
            "0",
            "--token-plots",
            "0",
            "--no-host-outliers",
            "--k",
            "3",
            "--gradients",
            "train",
            "--json",
        ],
    )
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    summary = json.loads(capsys.readouterr().out)
    g = summary["host_gradients"]
    assert g["data"] == str(data) and g["layers"] == [0, 2, 3] and g["tokens"] > 0
    from irm.analysis.gradients import residual_gradients
    from irm.data.rows import read_rows

    direct = residual_gradients(tiny_llama, read_rows(data), [0, 2, 3], max_length=64)  # all 6 rows: fewer than --gradient-rows
    assert g["top_indices"] == direct.summary(3)["top_indices"]
    assert g["mean_cosine_between_layers"] == pytest.approx(direct.summary(3)["mean_cosine_between_layers"], abs=1e-5)
    assert -1 <= g["spearman_with_irm_profile"] <= 1 and "shared" in g["coincidence_with_irm"]
    assert json.loads((tmp_path / "an" / "host_gradients.json").read_text()) == g


def test_analyze_table_prints_data_names_verbatim(tiny_llama, tmp_path, monkeypatch, capsys):
    """'builtin:anger:' in a message must not become an emoji (rich's :name: codes)."""
    nontrivial_irm(tiny_llama, "0,1", seed=4).save_pretrained(tmp_path / "run" / "irm")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "irm",
            "analyze",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "an"),
            "--limit",
            "1",
            "--max-new-tokens",
            "2",
            "--frames",
            "0",
            "--token-plots",
            "0",
            "--no-host-outliers",
            "--gradients",
            "builtin:anger",
            "--gradient-rows",
            "4",
        ],
    )
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert "host gradient on builtin:anger:" in capsys.readouterr().out.replace("\n", " ")
