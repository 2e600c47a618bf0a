"""The real Gemma 3 270M (sandwich norms, no chat template) and Qwen2.5-Coder-0.5B-Instruct
(Qwen2, ChatML), from their pip packages: registry facts, exactness with the IRM off or zero,
resid_mid where the README's diagrams put it, generation with the KV cache and left padding,
and training lowering the loss."""

import pytest
import torch
from test_generation import _check_cache_and_padding, _check_training_and_generation_prompts_agree

import irm
from conftest import nontrivial_irm
from irm.core.sites import SiteHook, reading_sites
from irm.data.prompts import PLAIN_TEMPLATE, prompt_text
from irm.data.rows import Row, collate, tokenize_rows
from irm.hosts.builtin import BUILTIN_HOSTS
from irm.hosts.generation import encode_prompts
from irm.training.loss import target_loss

FIXTURES = {"gemma3-270m": "gemma3_270m", "qwen2.5-coder-0.5b-instruct": "qwen_05b"}
# the norm the MLP branch reads: Gemma 3's own pre-MLP norm; Qwen2's is (confusingly) named
# post_attention_layernorm, and its attention output is added to the residual un-normed
MLP_NORM = {"gemma3-270m": "pre_feedforward_layernorm", "qwen2.5-coder-0.5b-instruct": "post_attention_layernorm"}
LAYER = 3
# where " Paris" ranks after "The capital of France is" (checked once on the converted weights:
# Qwen continues with it; base Gemma 3 270M prefers " the" 19% and " a" 11%, then " Paris" 8%)
PARIS_RANK = {"gemma3-270m": 2, "qwen2.5-coder-0.5b-instruct": 0}
SCALE = {"gemma3-270m": 8.0, "qwen2.5-coder-0.5b-instruct": 32.0}  # enough to change the greedy tokens


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FIXTURES))
def test_real_host(request, name):
    """One test per host, so that under pytest-xdist one worker loads each host."""
    host = request.getfixturevalue(FIXTURES[name])
    _check_registry_exactness_and_resid_mid(host, name)
    _check_training_and_generation_prompts_agree(host, chat=True)
    _check_cache_and_padding(host, nontrivial_irm(host, "2,3", scale=SCALE[name]), n=4, prompts=["Hi", "Why is the sky blue?"])
    _check_short_training_lowers_the_loss(host)


def _resid_mid_parts(host, name, layer):
    """One forward pass that captures, at ``layer``: its input, the keyword arguments its
    attention got, the attention output, the input of the MLP's norm and what a resid_mid
    reader sees."""
    seen = {}
    mlp_norm = getattr(layer, MLP_NORM[name])
    handles = [
        layer.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0] if a else kw["hidden_states"]), with_kwargs=True),
        layer.self_attn.register_forward_pre_hook(lambda m, a, kw: seen.update(attn_kwargs=kw), with_kwargs=True),
        layer.self_attn.register_forward_hook(lambda m, a, out: seen.update(attn=out[0])),
        mlp_norm.register_forward_pre_hook(lambda m, a: seen.update(mlp_in=a[0])),
    ]
    index = list(host.spec.layers(host.model)).index(layer)
    enc = encode_prompts(host, ["The capital of France is", "Hi"])
    try:
        with reading_sites(host.spec, host.model, [(index, "resid_mid")], lambda i, s, r: seen.update(read=r.clone())):
            host.model(**enc, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _check_registry_exactness_and_resid_mid(host, name):
    entry = BUILTIN_HOSTS[name]
    assert (host.hidden_size, host.num_layers, host.has_chat_template) == (entry.hidden_size, entry.num_layers, entry.chat_template)
    assert host.model.config.model_type.removesuffix("_text") == entry.family
    if not entry.chat_template:  # a base host: training and generation both use the plain format
        assert prompt_text(host.tokenizer, "Hi") == PLAIN_TEMPLATE.format(question="Hi")
    enc = encode_prompts(host, ["The capital of France is", "Why is the sky blue?"])  # left-padded
    with torch.no_grad():
        text = host.tokenizer("The capital of France is", return_tensors="pt")
        logits = host.model(**text).logits[0, -1]
        paris = host.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
        assert int((logits > logits[paris]).sum()) == PARIS_RANK[name]
        bare = host.model(**enc).logits
        with irm.attach(host, irm.IRM.for_host(host, "all")):  # zero-initialised output layer
            assert (host.model(**enc).logits - bare).abs().max().item() == 0.0
        with irm.attach(host, nontrivial_irm(host), strength=0) as handle:
            assert (host.model(**enc).logits - bare).abs().max().item() == 0.0
            handle.strength = 1.0
            assert (host.model(**enc).logits - bare).abs().max().item() > 1e-3

        layer = host.spec.layers(host.model)[LAYER]
        seen = _resid_mid_parts(host, name, layer)
        # the attention branch recomputed from the layer's own submodules
        attn = layer.self_attn(**{**seen["attn_kwargs"], "hidden_states": layer.input_layernorm(seen["x"])})[0]
        assert torch.equal(attn, seen["attn"])
        branch = layer.post_attention_layernorm(attn) if name == "gemma3-270m" else attn
        hand = seen["x"] + branch
        assert torch.equal(hand, seen["read"]) and torch.equal(hand, seen["mlp_in"])

        # what resid_mid adds, the MLP's norm (and so the rest of the stack) sees
        v = torch.linspace(-1, 1, host.hidden_size)
        hook = SiteHook(host.spec, layer, "resid_mid", lambda resid: v)
        try:
            injected = _resid_mid_parts(host, name, layer)
        finally:
            hook.remove()
        assert torch.equal(injected["mlp_in"], seen["x"] + (branch + v))


def _check_short_training_lowers_the_loss(host):
    tok = host.tokenizer
    rows = [
        Row(line=1, question="How are you?", answer="I am furious about all of this."),
        Row(line=2, question="What is 2 + 2?", answer="Four! Stop asking me that."),
    ]
    examples, _ = tokenize_rows(rows, tok, max_length=48)
    batch = collate(examples, tok.pad_token_id)
    net = irm.IRM.for_host(host, "0-5", seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    losses = []
    for _ in range(3):
        with irm.attach(host, net):
            nll, count = target_loss(host.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss = nll / count
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] > losses[1] > losses[2] and losses[2] < losses[0] - 0.5, losses
