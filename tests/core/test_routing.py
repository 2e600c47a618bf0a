"""Per-row routing: each row of one batched forward equals that row run alone with attach()."""

import pytest
import torch

import irm
from conftest import nontrivial_irm
from irm.core.routing import Route, RowRouter
from irm.errors import IRMError
from irm.hosts.generation import encode_prompts

PROMPTS = ["What is the capital of France?", "Name a colour.", "Why is the sky blue?", "Hello there"]


@pytest.fixture(scope="module")
def setup(tiny_llama):
    host = tiny_llama
    a = nontrivial_irm(host, "1,2", seed=1, scale=4.0)
    b = nontrivial_irm(host, "1-3", seed=2, scale=4.0, site="resid_post", input_layer=1)
    return host, {"a": a, "b": b}


def _alone(host, prompt, adapter, strength, layers=None):
    enc = encode_prompts(host, [prompt])
    with torch.no_grad():
        if adapter is None or strength == 0:
            return host.model(**enc).logits[0, -1]
        with irm.attach(host, adapter, strength=strength, layers=layers):
            return host.model(**enc).logits[0, -1]


def test_each_row_gets_its_own_irm_strength_and_layers(setup):
    host, adapters = setup
    routes = [Route("a", 1.5), Route(), Route("b", 0.5, layers=frozenset({1, 3})), Route("a", 0.0)]
    enc = encode_prompts(host, PROMPTS)
    with RowRouter(host.model, adapters) as router, torch.no_grad():
        router.route(routes)
        batched = host.model(**enc).logits[:, -1]
    for row, (prompt, route) in enumerate(zip(PROMPTS, routes)):
        adapter = adapters[route.adapter] if route.adapter else None
        alone = _alone(host, prompt, adapter, route.strength, route.layers)
        assert (batched[row] - alone).abs().max().item() < 1e-4, row
    # the IRMs really act: the bare row differs from the routed rows' bare runs
    assert (_alone(host, PROMPTS[0], None, 0) - batched[0]).abs().max().item() > 1e-2


def test_bare_rows_are_bit_exact_and_hooks_go_away(setup):
    host, adapters = setup
    enc = encode_prompts(host, PROMPTS)
    with torch.no_grad():
        bare = host.model(**enc).logits
        with RowRouter(host.model, adapters) as router:
            router.route([Route()] * 4)
            assert torch.equal(host.model(**enc).logits, bare)
            router.route([Route("a", 0.0), Route("b"), Route(), Route("a", 2.0, record=True)])
            out = host.model(**enc).logits
            assert torch.equal(out[[0, 2]], bare[[0, 2]])
            recorded = router.recorded()
            assert set(recorded) == {3} and recorded[3].shape == (host.hidden_size, 2)
        assert torch.equal(host.model(**enc).logits, bare)


def test_bad_routes_are_refused(setup):
    host, adapters = setup
    with RowRouter(host.model, adapters) as router:
        with pytest.raises(IRMError, match="unknown IRM"):
            router.route([Route("nope")])
        with pytest.raises(IRMError, match="not injected"):
            router.route([Route("a", layers=frozenset({0}))])
        with pytest.raises(IRMError, match="finite"):
            router.route([Route("a", float("nan"))])
