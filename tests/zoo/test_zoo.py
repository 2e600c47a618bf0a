"""The architecture zoo: one design choice per variant, the sites of irm's own model family
(post-norm included), resumable training, the build's guards, and one real micro build
through the ``irm`` executable whose models load and run as hosts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import irm
from irm import cli
from irm.core.sites import SiteHook, reading_sites, resolve_architecture
from irm.errors import HostError, IRMError
from irm.hosts.generation import encode_prompts
from irm.hosts.tiny import byte_tokenizer
from irm.zoo import train as zoo_train
from irm.zoo.build import plan_build
from irm.zoo.corpus import Corpus, wordnet_dir
from irm.zoo.modeling import ZooForCausalLM, rotary_tables
from irm.zoo.variants import RECIPES, VARIANTS, find_variant

IRM_BIN = str(Path(sys.executable).parent / "irm")
MICRO = RECIPES["micro"]


def micro_model(key: str, seed: int = 0) -> ZooForCausalLM:
    torch.manual_seed(seed)
    return ZooForCausalLM(MICRO.model_config(find_variant(key))).eval()


def test_each_variant_differs_from_the_base_in_exactly_one_switch():
    base = MICRO.model_config(VARIANTS[0]).to_dict()
    changed = {}
    for variant in VARIANTS[1:]:
        config = MICRO.model_config(variant).to_dict()
        changed[variant.key] = sorted(k for k in base if k not in ("architectures", "transformers_version") and config.get(k) != base[k])
    assert changed == {
        "learned": ["position"],
        "nope": ["position"],
        "layernorm": ["norm"],
        "postnorm": ["norm_placement"],
        "untied": ["tie_word_embeddings"],
    }
    assert len({v.name for v in VARIANTS}) == len(VARIANTS)
    reseeded = MICRO.with_seed(1)
    assert reseeded.name == "micro-seed1" and reseeded.corpus == MICRO.corpus and MICRO.with_seed(0) is MICRO
    assert find_variant("postnorm") is find_variant("zoo-rope-postnorm-tied") is find_variant("rope-postnorm-tied")
    with pytest.raises(IRMError, match="unknown zoo variant"):
        find_variant("alibi")
    untied = micro_model("untied")
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    tied = micro_model("base")
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    assert micro_model("postnorm").model.norm.__class__.__name__ == "Identity"
    assert isinstance(micro_model("layernorm").model.norm, torch.nn.LayerNorm)


@pytest.mark.parametrize("key", ["base", "postnorm"])
def test_sites_read_and_add_where_the_layer_computes_them(key):
    """resid_pre/mid/post equal the hand-computed values; pre-norm resid_mid is
    ``x + attn(norm(x))``, post-norm resid_mid is ``norm(x + attn(x))``; a vector added at
    resid_mid is what the MLP reads and what the residual carries."""
    model = micro_model(key)
    spec = resolve_architecture(model)
    layer = model.model.layers[1]
    ids = torch.randint(3, MICRO.corpus.vocab_size, (2, 9))
    seen = {}
    with (
        torch.no_grad(),
        reading_sites(spec, model, [(1, s) for s in ("resid_pre", "resid_mid", "resid_post")], lambda i, s, h: seen.update({s: h.clone()})),
    ):
        model(ids, use_cache=False)
    x = seen["resid_pre"]
    rope = rotary_tables(torch.arange(9)[None].expand(2, 9), model.config.head_dim, model.config.rope_theta, x.dtype)
    with torch.no_grad():
        if key == "postnorm":
            mid = layer.attn_norm(x + layer.attn(x, None, rope, None))
            post = layer.mlp_norm(mid + layer.mlp(mid))
        else:
            mid = x + layer.attn(layer.attn_norm(x), None, rope, None)
            post = mid + layer.mlp(layer.mlp_norm(mid))
    torch.testing.assert_close(seen["resid_mid"], mid, rtol=0, atol=1e-6)
    torch.testing.assert_close(seen["resid_post"], post, rtol=0, atol=1e-6)

    v = torch.randn(model.config.hidden_size)
    out = {}
    with (
        torch.no_grad(),
        SiteHook(spec, layer, "resid_mid", lambda h: v),
        reading_sites(spec, model, [(1, "resid_post")], lambda i, s, h: out.update(post=h)),
    ):
        model(ids, use_cache=False)
    with torch.no_grad():
        steered = mid + v
        want = layer.mlp_norm(steered + layer.mlp(steered)) if key == "postnorm" else steered + layer.mlp(layer.mlp_norm(steered))
    torch.testing.assert_close(out["post"], want, rtol=0, atol=1e-5)


def test_training_resumes_from_its_checkpoint_bit_for_bit(tmp_path, monkeypatch):
    recipe = replace(MICRO, steps=5, eval_every=2)
    rng = np.random.default_rng(0)
    corpus = Corpus(
        tokenizer=None, train=rng.integers(3, 300, 4000).astype(np.uint16), val=rng.integers(3, 300, 600).astype(np.uint16), info={}
    )  # type: ignore[arg-type]
    variant = find_variant("learned")
    whole, whole_state = zoo_train.train_variant(recipe, variant, corpus, tmp_path / "a")

    monkeypatch.setattr(zoo_train, "CHECKPOINT_SECONDS", -1.0)  # a checkpoint after every step
    (tmp_path / "b").mkdir()

    def killed_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        zoo_train.train_variant(recipe, variant, corpus, tmp_path / "b", killed_at_3)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state"]["step"] == 2
    resumed, state = zoo_train.train_variant(recipe, variant, corpus, tmp_path / "b")
    assert state.step == 5 and [row[0] for row in state.curve] == [0, 1, 2, 3, 4]
    assert state.curve == [tuple(r) for r in whole_state.curve] and state.val_curve == whole_state.val_curve
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [round(zoo_train.learning_rate(recipe, s) / recipe.lr, 3) for s in range(5)] == [0.5, 1.0, 1.0, 0.775, 0.325]


def test_build_guards_its_output_before_any_work(tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(IRMError, match="not empty"):
        plan_build(foreign, None, MICRO, overwrite=False)
    with pytest.raises(IRMError, match="not a zoo folder"):
        plan_build(foreign, None, MICRO, overwrite=True)
    assert (foreign / "mine.txt").read_text() == "keep me"

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "zoo.json").write_text(json.dumps({"format": "irm-zoo/1", "recipe": MICRO.with_steps(3).to_dict()}))
    with pytest.raises(IRMError, match="another recipe") as err:
        plan_build(zoo, ["base"], MICRO, overwrite=False)
    assert "--overwrite" in (err.value.hint or "")
    assert plan_build(zoo, ["base"], MICRO.with_steps(3), overwrite=False).status == {"zoo-rope-rmsnorm-tied": "missing"}
    plan = plan_build(zoo, ["base", "untied", "base"], MICRO, overwrite=True)
    assert not zoo.exists() and [v.key for v in plan.variants] == ["base", "untied"]


def test_zoo_host_names_say_how_to_build_them(tmp_path, monkeypatch):
    monkeypatch.setenv("IRM_CACHE", str(tmp_path))
    with pytest.raises(HostError, match="not built yet") as err:
        irm.load_host("zoo-rope-postnorm-tied", device="cpu")
    assert "irm zoo build --variants postnorm" in (err.value.hint or "")
    with pytest.raises(HostError, match="unknown zoo host") as err:
        irm.load_host("zoo-alibi-rmsnorm-tied", device="cpu")
    assert "zoo-rope-rmsnorm-tied" in (err.value.hint or "")


@pytest.mark.parametrize("key", [v.key for v in VARIANTS])
def test_generation_with_the_kv_cache_equals_without_with_an_irm_attached(key):
    """Left-padded batch, greedy: the same tokens and scores (to float rounding) with and
    without the KV cache, the same tokens as one prompt at a time, and the attached IRM
    changes them."""
    model = micro_model(key)
    host = irm.Host(model=model, tokenizer=byte_tokenizer(), name="zoo-micro", spec=resolve_architecture(model))
    prompts = ["What is your name?", "Hi"]
    enc = encode_prompts(host, prompts)
    assert not bool(enc["attention_mask"].all())

    def greedy(**kwargs):
        out = model.generate(
            **enc, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0, **kwargs
        )
        return out.sequences, torch.stack(out.scores)

    _, bare = greedy()
    with irm.attach(host, irm.IRM.for_host(host, "all", output_init="default", seed=0)):
        cached_ids, cached = greedy()
        uncached_ids, uncached = greedy(use_cache=False)
        alone = [irm.generate(host, [p], max_new_tokens=6)[0].token_ids for p in prompts]
        batched = [g.token_ids for g in irm.generate(host, prompts, max_new_tokens=6)]
    assert torch.equal(cached_ids, uncached_ids)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-5)
    assert (cached - bare).abs().max() > 1e-3
    assert alone == batched  # left padding changes nothing (positions follow the attention mask)


def run_cli(args, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["irm", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not (wordnet_dir() / "data.noun").is_file(), reason="the zoo corpus needs Debian's wordnet-base (make wordnet)")
def test_micro_zoo_builds_through_the_cli_and_loads_as_hosts(tmp_path, monkeypatch, capsys):
    env = {**os.environ, "IRM_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    args = ["zoo", "build", "--recipe", "micro", "--variants", "base,postnorm", "--json"]
    first = subprocess.run([IRM_BIN, *args], capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)
    assert [m["name"] for m in built["models"]] == ["zoo-rope-rmsnorm-tied", "zoo-rope-postnorm-tied"]
    for model in built["models"]:
        low, high = model["val_perplexity_ci95"]
        assert not model["cached"] and low <= model["val_perplexity"] <= high < MICRO.corpus.vocab_size
        assert len(model["massive_dims"]) == 5 and all(0 <= d < MICRO.hidden_size for d in model["massive_dims"])
    zoo = tmp_path / "cache" / "zoo"
    report = json.loads((zoo / "zoo-rope-postnorm-tied" / "zoo_model.json").read_text())
    assert report["steps"] == MICRO.steps and len(report["curve"]) == MICRO.steps and report["switches"]["norm_placement"] == "post"
    assert report["massive_activations"]["host"] == "zoo-rope-postnorm-tied" and math.isfinite(report["val"]["loss"])
    assert not list(zoo.glob(".*partial*"))

    monkeypatch.setenv("IRM_CACHE", str(tmp_path / "cache"))
    code, out = run_cli(args, monkeypatch, capsys)
    assert code == 0 and all(m["cached"] for m in json.loads(out)["models"])
    code, out = run_cli(["zoo", "list", "--json"], monkeypatch, capsys)
    status = {r["name"]: r["status"] for r in json.loads(out)}
    assert status["zoo-rope-postnorm-tied"] == "built" and status["zoo-nope-rmsnorm-tied"] == "missing"

    host = irm.load_host("zoo-rope-postnorm-tied", device="cpu")
    by_path = irm.load_host(str(zoo / "zoo-rope-postnorm-tied"), device="cpu")
    assert host.spec.family == "irm_zoo" and host.num_layers == MICRO.num_layers and host.context_length == MICRO.seq_len
    assert host.identity().fingerprint == by_path.identity().fingerprint and host.name == "zoo-rope-postnorm-tied"
    enc = encode_prompts(host, ["What is your name?"])
    with torch.no_grad():
        bare = host.model(**enc).logits
        with irm.attach(host, irm.IRM.for_host(host, "all", output_init="default", seed=0)):
            steered = host.model(**enc).logits
            text = irm.generate(host, ["What is your name?"], max_new_tokens=4)[0]
    assert (steered - bare).abs().max() > 1e-4 and len(text.token_ids) > 0
