"""The IRM network: parameter counts, save/load, host checks."""

import pytest
import torch

import irm
from conftest import nontrivial_irm


def test_paper_parameter_counts_from_config_alone():
    def config(hidden, layers):
        host = irm.HostIdentity(name="x", architecture="LlamaForCausalLM", model_type="llama", hidden_size=hidden, num_layers=layers)
        return irm.IRMConfig(host=host, layers=list(range(layers)))

    assert config(4096, 32).num_parameters() == 2_114_109_440
    assert config(256, 4).num_parameters() == 2_756_608


def test_parameter_count_matches_module(tiny_llama):
    for rank in (None, 8):
        net = irm.IRM.for_host(tiny_llama, "0-2", rank=rank, depth=2, width_multiplier=1.5)
        assert net.num_parameters() == net.config.num_parameters()


def test_save_load_round_trip_is_bit_exact(tmp_path, tiny_llama):
    net = nontrivial_irm(tiny_llama, "1,3", rank=16)
    net.save_pretrained(tmp_path / "irm")
    assert sorted(p.name for p in (tmp_path / "irm").iterdir()) == ["irm_config.json", "model.safetensors"]
    back = irm.IRM.from_pretrained(tmp_path / "irm", tiny_llama)
    assert back.config == net.config
    for (k, a), (k2, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_load_onto_another_host_is_refused(tmp_path, tiny_llama):
    nontrivial_irm(tiny_llama).save_pretrained(tmp_path / "irm")
    gpt2 = irm.load_host("tiny-random-gpt2", device="cpu")
    with pytest.raises(irm.IRMMismatchError, match="tiny-random-llama.*tiny-random-gpt2"):
        irm.IRM.from_pretrained(tmp_path / "irm", gpt2)
    mistral = irm.load_host("tiny-random-mistral", device="cpu")
    with pytest.raises(irm.IRMMismatchError, match="tiny-random-mistral"):
        irm.IRM.from_pretrained(tmp_path / "irm", mistral)
