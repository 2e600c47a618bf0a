"""Host folders (issue 15): a model-only folder is a host for what needs no text
(tokenizer None, forward passes on ids, import-reference, whose IRM reproduces the
reference's logits there) while text commands say it has no tokenizer; a folder without
weights, a model that is not a decoder LM, a damaged .gguf and bad device strings are
refused with exit 2 and a message."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import irm
from conftest import run_main
from irm.errors import HostError
from irm.hosts.loading import resolve_device
from reference_checkpoints import (
    N_LAYERS,
    hand_forward,
    reference_tensors,
    write_checkpoint,
)

IRM_BIN = str(Path(sys.executable).parent / "irm")


@pytest.fixture
def run_irm(monkeypatch, capsys):
    """``irm ARGS`` run in-process through ``irm.cli.main``: (exit code, stdout, stderr)."""
    return lambda *args: run_main(args, monkeypatch, capsys)


def assert_refused(result, *words):
    code, _, err = result
    assert code == 2, err
    assert "Traceback" not in err
    flat = " ".join(err.split()).lower()
    for word in words:
        assert word.lower() in flat, (word, err)


@pytest.fixture(scope="module")
def model_only(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("hosts") / "model-only"
    tiny_llama.model.save_pretrained(folder)
    assert not any("token" in p.name or "vocab" in p.name for p in folder.iterdir())
    return folder


IDS = torch.tensor([[1, 40, 77, 101, 9, 250]])


def test_model_only_folder_is_a_host_without_tokenizer(model_only, tiny_llama):
    host = irm.load_host(str(model_only), device="cpu")
    assert host.tokenizer is None and not host.has_chat_template
    with torch.no_grad():
        assert host.model(input_ids=IDS).logits.equal(tiny_llama.model(input_ids=IDS).logits)
        with irm.attach(host, irm.IRM.for_host(host, "all")):
            assert host.model(input_ids=IDS).logits.equal(tiny_llama.model(input_ids=IDS).logits)
    with pytest.raises(HostError, match="this host has no tokenizer"):
        host.require_tokenizer()
    with pytest.raises(HostError, match="this host has no tokenizer"):
        irm.generate(host, ["hi"])


def test_import_reference_on_a_model_only_folder_reproduces_the_reference(tmp_path, model_only, tiny_llama, run_irm):
    tensors = reference_tensors(N_LAYERS, seed=2)
    ckpt = write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, tensors)
    out = tmp_path / "irm"
    code, _, err = run_irm("import-reference", ckpt, "--host", model_only, "--out", out)
    assert code == 0, err
    host = irm.load_host(str(model_only), device="cpu")
    model = irm.IRM.from_pretrained(out, host)
    order = list(range(N_LAYERS))
    with torch.no_grad():
        want_delta, want_logits = hand_forward(host, tensors, order, IDS)
        with irm.attach(host, model):
            got = host.model(input_ids=IDS).logits
        bare = host.model(input_ids=IDS).logits
    assert (got - want_logits).abs().max().item() < 1e-5
    assert (got - bare).abs().max().item() > 1e-3


def test_text_commands_refuse_a_host_without_tokenizer(tmp_path, model_only, run_irm):
    assert_refused(run_irm("generate", "--host", model_only, "-p", "hi", "--irm", "none"), "this host has no tokenizer")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(12)))
    assert_refused(
        run_irm("train", "--host", model_only, "--data", data, "--out", tmp_path / "run", "--max-steps", "1"), "this host has no tokenizer"
    )
    assert not (tmp_path / "run").exists()


def test_broken_host_folders_are_refused(tmp_path, tiny_llama, run_irm):
    no_weights = tmp_path / "no-weights"
    tiny_llama.model.config.save_pretrained(no_weights)
    bert = tmp_path / "bert"
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(bert)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(200))
    for host, words in [(no_weights, ["no weights"]), (bert, ["'bert'", "not a decoder"]), (gguf, ["model.gguf", "not a readable gguf"])]:
        with pytest.raises(HostError) as info:
            irm.load_host(str(host), device="cpu")
        for word in words:
            assert word.lower() in info.value.message.lower()
    assert_refused(run_irm("generate", "--host", no_weights, "-p", "hi", "--irm", "none"), "no weights")
    assert_refused(run_irm("generate", "--host", bert, "-p", "hi", "--irm", "none"), "not a decoder")
    assert_refused(run_irm("generate", "--host", gguf, "-p", "hi", "--irm", "none"), "not a readable gguf")


@pytest.mark.parametrize("device", ["gpu0", "cuda:banana", "tpu"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"]))
def test_bad_device_strings_name_the_option(device):
    with pytest.raises(HostError, match="--device") as info:
        resolve_device(device)
    assert device in info.value.message and info.value.hint


def test_bad_device_is_refused_before_any_work(tmp_path, run_irm):
    device = "gpu0"
    assert_refused(run_irm("generate", "--host", "tiny-random-llama", "-p", "hi", "--irm", "none", "--device", device), "--device", "gpu0")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda")
