"""Host edits (irm.hosts.interventions): function-preserving on every family they support,
refused where they do not apply, and part of the host's identity."""

import copy

import pytest
import torch

import irm
from irm.errors import HostError, IRMError, IRMMismatchError
from irm.hosts.interventions import apply_host_edit, final_norm, is_tied, parse_host_edit, residual_permutation


def _with_trained_looking_norms(name):
    host = irm.load_host(name, device="cpu")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for key, value in host.model.named_parameters():
            if "norm" in key or "ln_" in key:
                value.add_(0.5 * torch.randn(value.shape, generator=generator))
    return host


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3", "tiny-random-qwen2", "tiny-random-gpt2"])
def test_edits_keep_the_function_of_tiny_hosts(name):
    host = _with_trained_looking_norms(name)
    ids = torch.tensor([[1, 70, 80, 90, 100, 110, 120]])
    with torch.no_grad():
        want = host.model(input_ids=ids).logits
        for edit in ("fold-norm", "permute:1"):
            model = copy.deepcopy(host.model)
            if edit.startswith("permute") and name == "tiny-random-gpt2":
                with pytest.raises(HostError, match="permute"):
                    apply_host_edit(model, edit)
                continue
            apply_host_edit(model, edit)
            assert (model(input_ids=ids).logits - want).abs().max() < 1e-5, edit
        folded = copy.deepcopy(host.model)
        apply_host_edit(folded, "fold-norm")
        norm = final_norm(folded)
        assert torch.allclose(norm.weight + (1.0 if "Gemma" in type(norm).__name__ else 0.0), torch.ones(64))
    with pytest.raises(HostError, match="not tied"):
        apply_host_edit(copy.deepcopy(host.model), "untie")


def test_edit_names_and_identity(tiny_llama, tmp_path):
    assert parse_host_edit("none").name == "" and parse_host_edit("permute:12").seed == 12
    for bad in ("permute", "permute:-1", "fold", 3):
        with pytest.raises(IRMError, match="host edit"):
            parse_host_edit(bad)
    permuted = irm.load_host("tiny-random-llama", device="cpu", edit="permute:1")
    assert permuted.identity().edit == "permute:1" and permuted.identity().fingerprint != tiny_llama.identity().fingerprint
    folded = irm.load_host("tiny-random-llama", device="cpu", edit="fold-norm")
    net = irm.IRM.for_host(folded, "all")
    assert net.config.to_dict()["host"]["edit"] == "fold-norm"
    assert "edit" not in irm.IRM.for_host(tiny_llama, "all").config.to_dict()["host"]
    net.save_pretrained(tmp_path / "irm")
    with pytest.raises(IRMMismatchError, match="--host-edit fold-norm"):
        irm.IRM.from_pretrained(tmp_path / "irm", tiny_llama)
    assert irm.IRM.from_pretrained(tmp_path / "irm", folded).config.host.edit == "fold-norm"


@pytest.mark.slow
def test_function_preserving_edits_of_the_real_smollm2(smollm2):
    """untie, fold-norm and permute change SmolLM2's logits by < 1e-4; permute relabels its
    residual stream exactly as residual_permutation says."""
    enc = smollm2.tokenizer(["The capital of France is", "I am so angry that"], return_tensors="pt", padding=True)
    assert is_tied(smollm2.model)
    with torch.no_grad():
        want = smollm2.model(**enc, output_hidden_states=True)
        perm = torch.as_tensor(residual_permutation(1, smollm2.hidden_size))
        for edit in ("untie", "fold-norm", "permute:1"):
            model = copy.deepcopy(smollm2.model)
            apply_host_edit(model, edit)
            got = model(**enc, output_hidden_states=True)
            assert (got.logits - want.logits).abs().max() < 1e-4, edit
            if edit == "permute:1":
                assert torch.allclose(got.hidden_states[10], want.hidden_states[10][..., perm], atol=1e-3, rtol=1e-4)
            else:
                assert not is_tied(model)
            del model
