"""Importing checkpoints of the published implementation: a synthetic checkpoint in its
format (Lightning layout, the IRM repeated under every decoder layer) imports, and the
attached IRM reproduces the documented forward; bad files are refused clearly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import irm
from irm.training.reference_import import (
    import_reference_checkpoint,
    read_reference_checkpoint,
)
from reference_checkpoints import (
    N_LAYERS,
    H,
    check_reproduces,
    reference_tensors,
    run_cli,
    write_checkpoint,
)

# ----------------------------------------------------------------------------- imports


def test_import_writes_an_ordinary_irm_directory(tmp_path, tiny_llama):
    tensors = reference_tensors(N_LAYERS)
    ckpt = write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, tensors)
    model = import_reference_checkpoint(ckpt, tiny_llama, out_dir=tmp_path / "irm")
    assert sorted(p.name for p in (tmp_path / "irm").iterdir()) == ["irm_config.json", "model.safetensors"]
    cfg = model.config
    assert (cfg.layers, cfg.site, cfg.input_layer, cfg.input_site) == ([0, 1, 2, 3], "resid_mid", 0, "resid_mid")
    assert (cfg.depth, cfg.width, cfg.rank) == (4, 3 * H, None)
    assert cfg.extra["imported_from"] == str(ckpt)
    for i in (0, 2, 4, 6, 8):
        for kind in ("weight", "bias"):
            assert torch.equal(model.state_dict()[f"net.{i}.{kind}"], tensors[f"basic_forward.{i}.{kind}"])
    back = irm.IRM.from_pretrained(tmp_path / "irm", tiny_llama)
    assert back.config == cfg
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    ref = read_reference_checkpoint(ckpt)
    assert ref.copies == ["model.irm."] + [f"model.layers.{n}.irm." for n in range(N_LAYERS)]


def test_attached_irm_reproduces_the_documented_forward(tmp_path, tiny_llama):
    tensors = reference_tensors(N_LAYERS, seed=1)
    model = import_reference_checkpoint(write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, tensors), tiny_llama)
    check_reproduces(tiny_llama, model, tensors, [0, 1, 2, 3])


def test_layers_come_from_hyper_parameters_or_layers_option(tmp_path, tiny_llama):
    tensors = reference_tensors(2, seed=2)
    saved = write_checkpoint(
        tmp_path / "saved.ckpt", tiny_llama, tensors, hparams={"learning_rate": 1e-4, "IRM_layers": [2, 3], "num_epochs": 15}
    )
    model = import_reference_checkpoint(saved, tiny_llama)
    assert model.config.layers == [2, 3]
    check_reproduces(tiny_llama, model, tensors, [2, 3])

    bare = write_checkpoint(tmp_path / "bare.ckpt", tiny_llama, tensors)
    with pytest.raises(irm.IRMError, match="(?s)injects 2 of .*4 layers.*--layers"):
        import_reference_checkpoint(bare, tiny_llama)
    assert import_reference_checkpoint(bare, tiny_llama, layers="2,3").config.layers == [2, 3]
    with pytest.raises(irm.IRMError, match="names 1 layers .*outputs 2"):
        import_reference_checkpoint(bare, tiny_llama, layers="1")


def test_unsorted_saved_layers_keep_their_slices(tmp_path, tiny_llama):
    # slice k belongs to the k-th saved layer: [3, 2] puts layer 3 in slice 0
    tensors = reference_tensors(2, seed=3)
    ckpt = write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, tensors, shared=True, hparams={"irm_config": {"injection_layers": [3, 2]}})
    model = import_reference_checkpoint(ckpt, tiny_llama)
    assert model.config.layers == [2, 3]
    check_reproduces(tiny_llama, model, tensors, [3, 2])


def test_loaded_weights_only_and_memory_mapped(tmp_path, tiny_llama, monkeypatch):
    tensors = reference_tensors(N_LAYERS)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ref = read_reference_checkpoint(write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, tensors))
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]
    assert all(t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * 4 for t in ref.state.values())
    # a legacy (pre-zip) file cannot be memory-mapped; it is still read weights-only
    legacy = write_checkpoint(tmp_path / "legacy.ckpt", tiny_llama, tensors, _use_new_zipfile_serialization=False)
    calls.clear()
    assert import_reference_checkpoint(legacy, tiny_llama).config.layers == [0, 1, 2, 3]
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": False}]


# ----------------------------------------------------------------------------- refusals


def test_unequal_copies_are_refused(tmp_path, tiny_llama):
    ckpt = write_checkpoint(
        tmp_path / "ref.ckpt", tiny_llama, reference_tensors(N_LAYERS), tamper="model.layers.2.irm.basic_forward.4.weight"
    )
    with pytest.raises(irm.IRMError, match=r"'model\.irm\.' and 'model\.layers\.2\.irm\.' differ, first at basic_forward\.4\.weight"):
        import_reference_checkpoint(ckpt, tiny_llama)


def test_nan_in_a_reference_checkpoint_is_named(tmp_path, tiny_llama):
    tensors = reference_tensors(N_LAYERS)
    tensors["basic_forward.4.weight"].view(-1)[3] = float("nan")
    ckpt = write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, tensors)
    with pytest.raises(irm.IRMError, match=r"basic_forward\.4\.weight holds NaN or inf") as info:
        import_reference_checkpoint(ckpt, tiny_llama)
    assert "differ" not in info.value.message


def test_wrong_host_is_refused(tmp_path, tiny_llama):
    ckpt = write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, reference_tensors(N_LAYERS))
    gpt2 = irm.load_host("tiny-random-gpt2", device="cpu")  # also hidden 64, 4 layers
    with pytest.raises(irm.IRMMismatchError, match="not those of host 'tiny-random-gpt2'"):
        import_reference_checkpoint(ckpt, gpt2)
    narrow = write_checkpoint(tmp_path / "narrow.ckpt", tiny_llama, reference_tensors(N_LAYERS, hidden=32), with_host=False)
    with pytest.raises(irm.IRMMismatchError, match="hidden states of size 32.*hidden size 64"):
        import_reference_checkpoint(narrow, tiny_llama)
    assert not (tmp_path / "out").exists()


def test_non_irm_and_unreadable_files_are_refused(tmp_path, tiny_llama):
    plain = tmp_path / "plain.ckpt"
    torch.save({"epoch": 0, "state_dict": dict(tiny_llama.model.state_dict())}, plain)
    with pytest.raises(irm.IRMError, match=r"not an IRM checkpoint.*model\.embed_tokens\.weight"):
        import_reference_checkpoint(plain, tiny_llama)
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(irm.IRMError, match="holds a list, not a checkpoint dict"):
        import_reference_checkpoint(tmp_path / "list.ckpt", tiny_llama)
    (tmp_path / "junk.ckpt").write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(irm.IRMError, match="not a readable PyTorch checkpoint"):
        import_reference_checkpoint(tmp_path / "junk.ckpt", tiny_llama)
    good = write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, reference_tensors(N_LAYERS)).read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(good[: len(good) // 2])
    with pytest.raises(irm.IRMError, match="not a readable PyTorch checkpoint"):
        import_reference_checkpoint(tmp_path / "cut.ckpt", tiny_llama)
    with pytest.raises(irm.IRMError, match="not found"):
        import_reference_checkpoint(tmp_path / "missing.ckpt", tiny_llama)


class _Payload:
    """Unpickling this object opens (creates) the marker file: arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_never_runs(tmp_path, tiny_llama):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    state = {f"model.irm.{k}": v for k, v in reference_tensors(N_LAYERS).items()}
    torch.save({"state_dict": state, "hyper_parameters": {"note": _Payload(marker)}}, ckpt)
    with pytest.raises(irm.IRMError, match="(?s)refused to load .*pickled Python objects.*open.*weights_only=True"):
        import_reference_checkpoint(ckpt, tiny_llama, out_dir=tmp_path / "irm")
    assert not marker.exists()
    assert not (tmp_path / "irm").exists()
    # control: the payload is real, an unsafe load would have run it
    control = tmp_path / "control"
    torch.save({"x": _Payload(control)}, tmp_path / "control.ckpt")
    torch.load(tmp_path / "control.ckpt", weights_only=False)
    assert control.exists()


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_imports_and_refuses(tmp_path, tiny_llama):
    tensors = reference_tensors(2, seed=4)
    ckpt = write_checkpoint(tmp_path / "ref.ckpt", tiny_llama, tensors, hparams={"IRM_layers": [2, 3]})
    out = tmp_path / "irm"
    result = run_cli(ckpt, "--host", "tiny-random-llama", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected_params = irm.IRMConfig(host=tiny_llama.identity(), layers=[2, 3]).num_parameters()
    assert summary == {
        "out": str(out),
        "layers": [2, 3],
        "hidden_size": H,
        "parameters": expected_params,
        "copies_checked": 5,
        "host": "tiny-random-llama",
    }
    model = irm.IRM.from_pretrained(out, tiny_llama)
    check_reproduces(tiny_llama, model, tensors, [2, 3])

    again = run_cli(ckpt, "--host", "tiny-random-llama", "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    bare = write_checkpoint(tmp_path / "bare.ckpt", tiny_llama, tensors)
    ok = run_cli(bare, "--host", "tiny-random-llama", "--out", out, "--overwrite", "--layers", "2,3")
    assert ok.returncode == 0, ok.stderr
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"model.norm.weight": torch.ones(H)}}, plain)
    refused = run_cli(plain, "--host", "tiny-random-llama", "--out", tmp_path / "other")
    assert refused.returncode == 2 and "not an IRM checkpoint" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_only_the_irm_is_read_into_memory(tmp_path, tiny_llama):
    # 512 MiB of optimizer state next to the IRM: memory-mapped, never read
    ckpt = tmp_path / "big.ckpt"
    state = {f"model.irm.{k}": v for k, v in reference_tensors(N_LAYERS).items()}
    torch.save({"state_dict": state, "optimizer_states": [{"exp_avg": torch.ones(128, 1024, 1024)}]}, ckpt)
    script = (
        "import resource, sys, irm\n"
        "from irm.training.reference_import import import_reference_checkpoint\n"
        "host = irm.load_host('tiny-random-llama', device='cpu')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "import_reference_checkpoint(sys.argv[1], host)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(ckpt)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 100  # MiB of extra peak memory
