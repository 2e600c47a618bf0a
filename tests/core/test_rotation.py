"""The basis tests' fixed orthogonal bases (irm.core.rotation): orthogonal, applied as
R @ out, bit-identical to no rotation when R is the identity, saved as a seed and checked
on load; old files without them read back byte for byte."""

import json

import pytest
import torch

import irm
from conftest import nontrivial_irm
from irm.core.rotation import input_rotation, output_rotations
from irm.errors import IRMError, IRMMismatchError
from irm.training.config import TrainConfig


def test_rotation_is_orthogonal_applied_and_identity_is_bit_identical(tiny_llama, tmp_path):
    host = tiny_llama
    plain = nontrivial_irm(host, "1,3", seed=5, scale=4.0)
    rotated = nontrivial_irm(host, "1,3", seed=5, scale=4.0, output_rotation=7)
    ids = torch.tensor([[1, 40, 50, 60, 70, 80]])
    R = output_rotations(7, [1, 3], 64).double()
    assert torch.equal(rotated.output_rotation, R.float())  # regenerated from the seed alone
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(64, dtype=torch.float64).expand(2, 64, 64), atol=1e-6)
    assert torch.equal(output_rotations(7, [3], 64)[0], R[1].float()), "R of a layer does not depend on the other layers"
    with torch.no_grad():
        injected = irm.irm_output(host, rotated, input_ids=ids)  # what the hooks add at each layer
        own = irm.irm_output(host, plain, input_ids=ids)  # same weights, no rotation
        for k in range(2):
            assert torch.allclose(injected[..., k].double(), own[..., k].double() @ R[k].T, atol=1e-6)
        assert torch.allclose(rotated.own_basis(injected), own, atol=1e-6)
        with irm.attach(host, plain):
            want = host.model(input_ids=ids).logits
        rotated.output_rotation.copy_(torch.eye(64).expand(2, 64, 64))
        with irm.attach(host, rotated):
            got = host.model(input_ids=ids).logits
    assert torch.equal(got, want), "R = identity must be bit-identical to no rotation"


def test_save_load_round_trips_the_rotation_and_checks_it(tiny_llama, tmp_path):
    net = nontrivial_irm(tiny_llama, "all", seed=1, output_rotation=3, input_rotation=4)
    assert torch.equal(net.input_rotation, input_rotation(4, 64))
    net.save_pretrained(tmp_path / "irm")
    saved = json.loads((tmp_path / "irm" / "irm_config.json").read_text())
    assert saved["output_rotation"] == 3 and saved["input_rotation"] == 4 and len(saved["rotation_sha256"]) == 16
    back = irm.IRM.from_pretrained(tmp_path / "irm", tiny_llama)
    x = torch.randn(3, 64)
    assert torch.equal(back.output_rotation, net.output_rotation) and torch.equal(back(x), net(x))
    assert back.config.to_dict() == net.config.to_dict()
    saved["rotation_sha256"] = "0" * 16  # as if numpy drew other matrices from the seed
    (tmp_path / "irm" / "irm_config.json").write_text(json.dumps(saved))
    with pytest.raises(IRMMismatchError, match="checksum"):
        irm.IRM.from_pretrained(tmp_path / "irm", tiny_llama)
    plain = irm.IRM.for_host(tiny_llama, "all")
    assert not {"output_rotation", "input_rotation", "rotation_sha256"} & set(plain.config.to_dict())
    with pytest.raises(IRMError, match="output_rotation"):
        irm.IRM.for_host(tiny_llama, "all", output_rotation=-1)


def test_train_config_writes_the_new_settings_only_when_set():
    assert not {"optimizer", "momentum", "output_rotation", "host_edit"} & set(TrainConfig().to_dict())
    config = TrainConfig(optimizer="sgd", lr=0.1, output_rotation=2, host_edit="permute:3")
    assert TrainConfig.from_dict(config.to_dict()) == config
    for bad in ({"optimizer": "adamw"}, {"host_edit": "permute:x"}, {"momentum": 1.0}):
        with pytest.raises(IRMError, match=next(iter(bad)).replace("_", "-")):
            TrainConfig(**bad)
