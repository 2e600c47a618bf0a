"""Hand-edited or damaged IRM directories (issue 15): every bad field of irm_config.json,
and weights that no IRM writes, are refused with an IRMError naming the file and the
field; through the CLI that is exit 2 with a message and no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import irm
from irm.core.config import HostIdentity
from irm.errors import IRMError
from irm.hosts.loading import check_host_matches

IRM_BIN = str(Path(sys.executable).parent / "irm")
TINY = "tiny-random-llama"


def _saved(tmp: Path, host) -> Path:
    return irm.IRM.for_host(host, "all", seed=0).save_pretrained(tmp / "irm")


def _edit_config(d: Path, edit) -> Path:
    cfg = json.loads((d / "irm_config.json").read_text())
    edit(cfg)
    (d / "irm_config.json").write_text(json.dumps(cfg))
    return d


CONFIG_EDITS = {
    "depth-fraction": (lambda c: c.update(depth=2.5), "depth"),
    "width-nan": (lambda c: c.update(width_multiplier=float("nan")), "width_multiplier"),
    "width-negative": (lambda c: c.update(width_multiplier=-3), "width_multiplier"),
    "width-huge": (lambda c: c.update(width_multiplier=1e12), "width_multiplier"),
    "width-text": (lambda c: c.update(width_multiplier="3"), "width_multiplier"),
    "extra-null": (lambda c: c.update(extra=None), "extra"),
    "extra-list": (lambda c: c.update(extra=[1, 2]), "extra"),
    "input-layer-negative": (lambda c: c.update(input_layer=-1), "input_layer"),
    "input-layer-too-big": (lambda c: c.update(input_layer=99), "input_layer"),
    "rank-text": (lambda c: c.update(rank="8"), "rank"),
    "depth-bool": (lambda c: c.update(depth=True), "depth"),
    "site-list": (lambda c: c.update(site=["resid_mid"]), "site"),
    "layers-text": (lambda c: c.update(layers="0-3"), "layers"),
    "layers-float": (lambda c: c.update(layers=[0, 1.5]), "layers"),
    "layers-duplicate": (lambda c: c.update(layers=[0, 0, 1]), "layers"),
    "host-list": (lambda c: c.update(host=[1]), "host"),
    "host-hidden-text": (lambda c: c["host"].update(hidden_size="64"), "host.hidden_size"),
    "host-unknown-key": (lambda c: c["host"].update(colour="red"), "host"),
    "format-version-text": (lambda c: c.update(format_version="1"), "format_version"),
    "missing-layers": (lambda c: c.pop("layers"), "layers"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_EDITS))
def test_hand_edited_config_is_refused_naming_file_and_field(tmp_path, tiny_llama, case):
    edit, field = CONFIG_EDITS[case]
    d = _edit_config(_saved(tmp_path, tiny_llama), edit)
    with pytest.raises(IRMError) as info:
        irm.IRM.from_pretrained(d, tiny_llama)
    assert "irm_config.json" in info.value.message and field in info.value.message, info.value.message
    assert info.value.hint


def test_deeply_nested_and_oversized_json_are_refused(tmp_path, tiny_llama):
    d = _saved(tmp_path, tiny_llama)
    (d / "irm_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(IRMError, match="irm_config.json"):
        irm.IRM.from_pretrained(d, tiny_llama)
    (d / "irm_config.json").write_text('{"extra": {"a": "' + "x" * (2 << 20) + '"}}')
    with pytest.raises(IRMError, match="too large"):
        irm.IRM.from_pretrained(d, tiny_llama)


def _rewrite_weights(d: Path, change) -> Path:
    state = load_file(str(d / "model.safetensors"))
    change(state)
    save_file(state, str(d / "model.safetensors"))
    return d


WEIGHT_EDITS = {
    "int32": (lambda s: s.update({k: v.to(torch.int32) for k, v in s.items()}), "int32"),
    "mixed-dtypes": (lambda s: s.update({"net.0.weight": s["net.0.weight"].double()}), "mix dtypes"),
    "nan": (lambda s: s["net.2.weight"].view(-1).__setitem__(3, float("nan")), "NaN or inf"),
    "inf": (lambda s: s["net.0.bias"].view(-1).__setitem__(0, float("inf")), "NaN or inf"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_EDITS))
def test_weights_no_irm_writes_are_refused(tmp_path, tiny_llama, case):
    change, words = WEIGHT_EDITS[case]
    d = _rewrite_weights(_saved(tmp_path, tiny_llama), change)
    with pytest.raises(IRMError, match=words) as info:
        irm.IRM.from_pretrained(d, tiny_llama)
    assert "model.safetensors" in info.value.message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_steering_vector_with_nan_or_inf_is_refused(tmp_path, tiny_llama, value):
    from irm.core.steering import SteeringVector, steering_config

    d = SteeringVector(steering_config(tiny_llama, [1, 2], "resid_mid")).save_pretrained(tmp_path / "sv")
    _rewrite_weights(d, lambda s: s["vectors"].view(-1).__setitem__(5, value))
    with pytest.raises(IRMError, match="NaN or inf"):
        SteeringVector.from_pretrained(d, tiny_llama)
    _rewrite_weights(d, lambda s: s.update(vectors=torch.zeros(64, 2, dtype=torch.int32)))
    with pytest.raises(IRMError, match="int32"):
        SteeringVector.from_pretrained(d, tiny_llama)


def test_steering_vector_save_leaves_old_files_on_a_failed_write(tmp_path, tiny_llama, monkeypatch):
    from irm.core import io
    from irm.core.steering import SteeringVector, steering_config

    old = SteeringVector(steering_config(tiny_llama, [1], "resid_mid"))
    d = old.save_pretrained(tmp_path / "sv")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    new = SteeringVector(steering_config(tiny_llama, [1, 2], "resid_mid"))
    real = io.os.fsync
    calls = []

    def full_disk_on_second_file(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(fd)

    # the disk fills while the second file (the config) is written: the new weights
    # must not have replaced the old ones
    monkeypatch.setattr(io.os, "fsync", full_disk_on_second_file)
    with pytest.raises(IRMError):
        new.save_pretrained(d)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in d.iterdir()}
    assert sorted(after) == sorted(before)
    assert after == before
    loaded = SteeringVector.from_pretrained(d, tiny_llama)  # weights and config still belong together
    assert loaded.config.layers == [1]


def test_host_mismatch_names_types():
    identity = HostIdentity("h", "LlamaForCausalLM", "llama", 64, 4)
    config = irm.IRMConfig(host=identity, layers=[0])
    object.__setattr__(config.host, "hidden_size", "64")

    class FakeHost:
        def identity(self):
            return HostIdentity("h", "LlamaForCausalLM", "llama", 64, 4)

    with pytest.raises(irm.IRMMismatchError, match=r"hidden_size '64' \(str\) != 64 \(int\)"):
        check_host_matches(config, FakeHost())


@pytest.mark.parametrize("case", ["depth-fraction", "extra-list", "host-hidden-text"])
def test_cli_refuses_hand_edited_config(tmp_path, tiny_llama, case):
    edit, field = CONFIG_EDITS[case]
    d = _edit_config(_saved(tmp_path, tiny_llama), edit)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [IRM_BIN, "generate", "--host", TINY, "-p", "hi", "--irm", str(d)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "irm_config.json" in proc.stderr and field in proc.stderr
    assert sorted(p.name for p in d.iterdir()) == ["irm_config.json", "model.safetensors"]
