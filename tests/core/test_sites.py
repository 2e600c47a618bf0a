"""One site accessor (irm.core.sites.SiteHook): reads what the host computes at each site,
adds there exactly as attach does, and always removes its hooks; attach.is_attached."""

import pytest
import torch

import irm
from conftest import nontrivial_irm
from irm.core.attach import is_attached
from irm.core.sites import SITES, SiteHook, reading_sites
from irm.core.steering import recording
from irm.hosts.tiny import TINY_CONFIGS


def _ids(host):
    return torch.tensor([[1, 5, 9, 13, 17, 21]], device=host.device)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_reading_each_site_matches_the_hosts_own_states(name):
    host = irm.load_host(name, device="cpu")
    ids = _ids(host)
    with torch.no_grad():
        out = host.model(input_ids=ids, output_hidden_states=True)
        before = _hook_count(host.model)  # transformers may keep hooks of its own
        with (
            recording(host, [0, 1], "resid_pre") as pre,
            recording(host, [0], "resid_post") as post,
            recording(host, [1], "resid_mid") as mid,
        ):
            host.model(input_ids=ids)
    # hidden_states[i] is the input of layer i
    assert pre[0].equal(out.hidden_states[0]) and pre[1].equal(out.hidden_states[1])
    assert post[0].equal(out.hidden_states[1])
    assert mid[1].shape == pre[1].shape and not mid[1].equal(pre[1])
    assert _hook_count(host.model) == before


@pytest.mark.parametrize("site", SITES)
def test_adding_at_a_site_is_what_attach_adds(tiny_llama, site):
    host = tiny_llama
    ids = _ids(host)
    before = _hook_count(host.model)
    steer = irm.SteeringVector(irm.core.steering.steering_config(host, [1], site))
    vector = torch.randn(host.hidden_size, generator=torch.Generator().manual_seed(0))
    steer.vectors.data[:, 0] = vector
    with torch.no_grad():
        with irm.attach(host, steer):
            want = host.model(input_ids=ids).logits
        layer = host.spec.layers(host.model)[1]
        with SiteHook(host.spec, layer, site, lambda resid: vector, reads=False):
            got = host.model(input_ids=ids).logits
    assert got.equal(want)
    assert _hook_count(host.model) == before


def test_site_hooks_are_removed_on_errors(tiny_llama):
    host = tiny_llama
    before = _hook_count(host.model)

    def boom(layer, site, resid):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with reading_sites(host.spec, host.model, [(0, s) for s in SITES], boom):
            host.model(input_ids=_ids(host))
    assert _hook_count(host.model) == before
    with pytest.raises(ValueError):
        SiteHook(host.spec, host.spec.layers(host.model)[0], "resid_x", lambda r: None)
    assert _hook_count(host.model) == before


def test_is_attached(tiny_llama):
    host = tiny_llama
    assert not is_attached(host) and not is_attached(host.model)
    with irm.attach(host, nontrivial_irm(host)) as handle:
        assert is_attached(host) and is_attached(host.model)
        handle.disable()
        assert not is_attached(host)
        handle.enable()
        assert is_attached(host)
    assert not is_attached(host)
    with irm.attach(host, nontrivial_irm(host), strength=0.0):
        assert not is_attached(host)  # strength 0: no hooks, the bare host


def test_unsupported_architecture_is_named():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, is_decoder=True))
    with pytest.raises(irm.HostError, match="(?s)BertLMHeadModel.*supports"):
        irm.resolve_architecture(model)
