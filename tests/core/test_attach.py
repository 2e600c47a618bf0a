"""attach: hooks on unmodified hosts, exactness, sites, strength, clean-up."""

import pytest
import torch

import irm
from conftest import nontrivial_irm
from irm.hosts.tiny import TINY_CONFIGS

ARCHS = sorted(TINY_CONFIGS)


def _batch(host, texts=("The quick brown fox", "Hello")):
    tok = host.tokenizer
    tok.padding_side = "right"
    return tok(list(texts), return_tensors="pt", padding=True)


@pytest.mark.parametrize("name", ARCHS)
def test_off_and_zero_irm_are_exactly_the_host(name):
    host = irm.load_host(name, device="cpu")
    enc = _batch(host)
    with torch.no_grad():
        bare = host.model(**enc).logits
        zero = irm.IRM.for_host(host, "all")  # zero-initialised output layer
        with irm.attach(host, zero):
            assert (host.model(**enc).logits - bare).abs().max().item() == 0.0
        strong = nontrivial_irm(host)
        with irm.attach(host, strong, strength=0.0) as handle:
            assert not handle.active
            assert (host.model(**enc).logits - bare).abs().max().item() == 0.0
            handle.strength = 1.0
            assert (host.model(**enc).logits - bare).abs().max().item() > 0


@pytest.mark.parametrize("name", ARCHS)
def test_every_site_changes_output_and_cleans_up(name):
    host = irm.load_host(name, device="cpu")
    enc = _batch(host)
    layers = irm.resolve_architecture(host.model).layers(host.model)
    with torch.no_grad():
        bare = host.model(**enc).logits
        for site in irm.SITES:
            model = nontrivial_irm(host, "1-3", site=site)
            with irm.attach(host, model):
                assert (host.model(**enc).logits - bare).abs().max() > 1e-3
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in host.model.modules())
    assert len(layers) == 4


@pytest.mark.slow
def test_smollm2_zero_irm_is_exact(smollm2):
    enc = _batch(smollm2, ["What is the capital of France?"])
    with torch.no_grad():
        bare = smollm2.model(**enc).logits
        with irm.attach(smollm2, irm.IRM.for_host(smollm2, "all")):
            assert (smollm2.model(**enc).logits - bare).abs().max().item() == 0.0
        with irm.attach(smollm2, nontrivial_irm(smollm2), strength=0):
            assert (smollm2.model(**enc).logits - bare).abs().max().item() == 0.0


def _hand_forward(host, model, ids):
    """Llama forward written out from the layer's parts, with the IRM added by hand."""
    base = host.model.model
    x = base.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    rope = base.rotary_emb(x, position_ids=pos)
    cfg = model.config
    source = (cfg.input_layer, cfg.input_site)
    delta = None

    def inject(i, site, h):
        nonlocal delta
        if (i, site) == source:
            delta = model(h)
        if site == cfg.site and i in cfg.layers:
            h = h + delta[..., cfg.layers.index(i)]
        return h

    for i, layer in enumerate(base.layers):
        x = inject(i, "resid_pre", x)
        attn = layer.self_attn(layer.input_layernorm(x), position_embeddings=rope, attention_mask=None, position_ids=pos)[0]
        mid = inject(i, "resid_mid", x + attn)
        x = mid + layer.mlp(layer.post_attention_layernorm(mid))
        x = inject(i, "resid_post", x)
    return host.model.lm_head(base.norm(x))


@pytest.mark.parametrize(
    "site,input_site,layers",
    [
        ("resid_mid", "resid_mid", "all"),
        ("resid_mid", "resid_mid", "0"),
        ("resid_pre", "resid_mid", "1"),
        ("resid_post", "resid_mid", "0,1"),
        ("resid_pre", "resid_pre", "all"),
        ("resid_post", "resid_post", "0,1"),
    ],
)
def test_hooked_forward_equals_hand_computed_forward(site, input_site, layers):
    from irm.hosts.tiny import _llama, build_tiny, byte_tokenizer

    model2 = build_tiny("two-layer", config=_llama(layers=2))
    host = irm.Host(model=model2.eval(), tokenizer=byte_tokenizer(), name="two-layer-llama", spec=irm.resolve_architecture(model2))
    net = nontrivial_irm(host, layers, site=site, input_site=input_site)
    ids = host.tokenizer(["injectable realignment"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = _hand_forward(host, net, ids)
        with irm.attach(host, net):
            got = host.model(input_ids=ids).logits
    assert (got - expected).abs().max().item() < 1e-5
    assert (got - host.model(input_ids=ids).logits).abs().max().item() > 1e-3


def test_irm_output_layout_layer_index_fastest(tiny_llama):
    net = nontrivial_irm(tiny_llama, "0,2")
    h = torch.randn(2, 3, tiny_llama.hidden_size)
    flat = net.net(h)
    out = net(h)
    assert out.shape == (2, 3, tiny_llama.hidden_size, 2)
    # element (d, k) sits at flat index d * L + k
    assert torch.equal(out[..., 5, 1], flat[..., 5 * 2 + 1])


def test_hooks_removed_after_exception(tiny_llama):
    net = nontrivial_irm(tiny_llama)
    with pytest.raises(ValueError):
        with irm.attach(tiny_llama, net) as handle:
            assert handle.active
            raise ValueError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_llama.model.modules())
    assert handle._state is None


def test_no_irm_output_left_after_forward(tiny_llama):
    net = nontrivial_irm(tiny_llama)
    enc = _batch(tiny_llama)
    with irm.attach(tiny_llama, net) as handle, torch.no_grad():
        tiny_llama.model(**enc)
        assert handle._state is None
        for module in tiny_llama.model.modules():
            assert not any(isinstance(v, torch.Tensor) and v.dim() == 4 for v in vars(module).values())


def test_layer_subset_and_strength_scaling(tiny_llama):
    net = nontrivial_irm(tiny_llama, "all")
    enc = _batch(tiny_llama)
    with torch.no_grad():
        bare = tiny_llama.model(**enc).logits
        with irm.attach(tiny_llama, net, layers=[3]):
            only3 = tiny_llama.model(**enc).logits
        with irm.attach(tiny_llama, net):
            full = tiny_llama.model(**enc).logits
        assert (only3 - bare).abs().max() > 0 and (only3 - full).abs().max() > 0
    with pytest.raises(irm.IRMError, match="not injected"):
        irm.attach(tiny_llama, irm.IRM.for_host(tiny_llama, "0-1"), layers=[3])
    with pytest.raises(irm.IRMError, match="finite"):
        irm.attach(tiny_llama, net, strength=float("nan"))


def test_strength_scales_the_injected_vector(tiny_llama):
    net = nontrivial_irm(tiny_llama, "all")
    enc = _batch(tiny_llama)
    seen = {}
    layer0 = tiny_llama.spec.layers(tiny_llama.model)[0]
    hook = layer0.register_forward_hook(lambda m, a, o: seen.__setitem__("x", o.clone()))
    try:
        with torch.no_grad():
            tiny_llama.model(**enc)
            bare = seen["x"]
            outs = {}
            for s in (1.0, 2.0):
                with irm.attach(tiny_llama, net, strength=s):
                    tiny_llama.model(**enc)
                    outs[s] = seen["x"] - bare
    finally:
        hook.remove()
    assert outs[1.0].abs().max() > 0
    # the MLP is nonlinear, so compare the injected vector at resid_mid through the IRM directly
    captured = irm.irm_output(tiny_llama, net, **enc)
    assert captured.shape[-1] == 4
