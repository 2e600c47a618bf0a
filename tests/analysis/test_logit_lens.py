"""The logit lens of IRM outputs (irm.analysis.logit_lens), and the analysis in both bases."""

import json

import numpy as np
import torch

import irm
from conftest import nontrivial_irm
from irm.analysis import statistics as A
from irm.analysis.logit_lens import direct_effect, index_lens, layer_mean_lens
from irm.analysis.pipeline import AnalyzeOptions, analyze
from irm.analysis.recording import record, save_recording

PROMPTS = ["Hi", "What is the capital of France?"]


def test_lens_of_a_hand_made_irm_ranks_its_tokens_first():
    """An IRM whose every output is token 42's unembedding (the LM head's row for it, divided
    by the final norm's gains so that the norm gives it back): the lens of each layer's mean
    ranks the tokens by the head's logits for that vector, token 42 first; the lens of one
    index ranks the tokens by that index's head column."""
    host = irm.load_host("tiny-random-llama", device="cpu")
    head, norm = host.model.lm_head.weight, host.model.model.norm
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 64))
        net = irm.IRM.for_host(host, "1,3")  # zero output layer: the bias alone is the output
        unembedding = head[42] / norm.weight
        net.output_layer.bias.copy_(unembedding[:, None].expand(64, 2).reshape(-1))
        outputs = irm.irm_output(host, net, input_ids=torch.tensor([[1, 60, 70, 80]]))
    outputs = outputs[0].permute(0, 2, 1).numpy()  # (tokens, layers, hidden)
    by_hand = torch.argsort(head @ head[42], descending=True)[:10].tolist()
    for row in layer_mean_lens(host, outputs, [1, 3], k=10):
        assert [t["id"] for t in row["promoted"]] == by_hand and by_hand[0] == 42
        assert [t["id"] for t in row["suppressed"]] == torch.argsort(head @ head[42])[:10].tolist()
    index = int(torch.argmax(unembedding.abs()))
    (row,) = index_lens(host, outputs, [index], k=5)
    sign = 1 if unembedding[index] > 0 else -1
    assert row["sign"] == sign and [t["id"] for t in row["promoted"]] == torch.argsort(sign * head[:, index], descending=True)[:5].tolist()


def test_direct_effect_of_all_layers_is_the_whole_change(tiny_llama):
    net = nontrivial_irm(tiny_llama, "all", seed=2, scale=4.0)
    report = direct_effect(tiny_llama, net, PROMPTS, k=3)
    assert [row["last_k"] for row in report["depths"]] == [1, 2, 4]
    last = report["depths"][-1]
    assert abs(last["share_of_full_change"] - 1) < 1e-5 and abs(last["mean_cosine_with_full"] - 1) < 1e-5
    assert report["depths"][0]["first_layer"] == 3 and abs(report["depths"][0]["share_of_full_change"] - 1) > 1e-3


def test_analyze_reports_both_bases_and_the_lens(tiny_llama, tmp_path):
    rotated = nontrivial_irm(tiny_llama, "1,3", seed=4, scale=4.0, output_rotation=9)
    plain = nontrivial_irm(tiny_llama, "1,3", seed=4, scale=4.0)
    for name, net in (("rotated", rotated), ("plain", plain)):
        save_recording(record(tiny_llama, net, PROMPTS, max_new_tokens=4, dtype=torch.float32), tmp_path / name)
    options = AnalyzeOptions(k=4, token_plots=0, frames=0, host_outliers=False, logit_lens=True, lens_tokens=3)
    result = analyze([tmp_path / "rotated", tmp_path / "plain"], tmp_path / "out", options)
    rot, pl = result["runs"]
    assert pl["irm_basis"]["rotated"] is False and rot["irm_basis"]["rotated"] is True
    own = np.load(tmp_path / "out" / "rotated" / "mean_abs_map_irm_basis.npy")
    # the same weights without R: the rotated IRM's own-basis output is the plain IRM's output
    assert rot["irm_basis"]["top_k"]["indices"] == pl["top_k"]["indices"] == A.top_k(A.index_profile(own), 4).indices
    assert rot["top_k"]["indices"] != pl["top_k"]["indices"]
    irm_basis = json.loads((tmp_path / "out" / "consistency_irm_basis.json").read_text())
    (report,) = irm_basis.values()
    assert report["pairs"][0]["jaccard"] == 1.0 and result["consistency"] != irm_basis
    lens = json.loads((tmp_path / "out" / "plain" / "logit_lens.json").read_text())
    assert [row["index"] for row in lens["top_indices"]] == pl["top_k"]["indices"] and len(lens["layer_means"]) == 2
    assert "direct_effect" not in lens  # a recording alone: the IRM is not there to run again
