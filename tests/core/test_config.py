"""The IRM's shape is defined once (IRMSpec): IRMConfig, IRM.for_host, TrainConfig and the
`irm train` flags all take it from there, and the flat file formats do not change."""

import dataclasses
import json
from pathlib import Path

import pytest
import typer.main
import yaml

import irm
from irm.core.config import ABSENT_WHEN_DEFAULT, SPEC_FIELDS, IRMSpec, spec_help
from irm.errors import IRMError
from irm.training.config import TrainConfig

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy"


def test_for_host_refuses_width_zero_as_train_config_does(tiny_llama):
    with pytest.raises(IRMError) as direct:
        irm.IRM.for_host(tiny_llama, "all", width_multiplier=0)
    with pytest.raises(IRMError) as train:
        TrainConfig(width_multiplier=0)
    rule = IRMSpec.spec_checks(IRMSpec())[4][2]
    assert rule in direct.value.message and rule in train.value.message
    assert "width_multiplier" in direct.value.message and "--width-multiplier" in train.value.message


@pytest.mark.parametrize(
    "bad",
    [
        {"depth": 2.5},
        {"depth": -1},
        {"rank": 0},
        {"site": "resid_x"},
        {"input_layer": -1},
        {"width_multiplier": float("nan")},
        {"width_multiplier": 1e9},
        {"output_init": "ones"},
    ],
)
def test_every_consumer_refuses_the_same_bad_shape(tiny_llama, bad):
    (key,) = bad
    for build in (
        lambda: IRMSpec(**bad),
        lambda: irm.IRM.for_host(tiny_llama, "all", **bad),
        lambda: irm.IRMConfig(host=tiny_llama.identity(), layers=[0], **bad),
    ):
        with pytest.raises(IRMError, match=key):
            build()


def test_for_host_takes_a_spec_or_its_fields(tiny_llama):
    spec = IRMSpec(depth=2, width_multiplier=1.5, rank=4)
    a = irm.IRM.for_host(tiny_llama, "0-1", spec, seed=3)
    b = irm.IRM.for_host(tiny_llama, "0-1", depth=2, width_multiplier=1.5, rank=4, seed=3)
    assert a.config == b.config and a.config.irm_spec() == spec
    for key, value in a.state_dict().items():
        assert value.equal(b.state_dict()[key])
    config = TrainConfig(depth=2, width_multiplier=1.5, rank=4)
    assert config.irm_spec() == spec


def test_train_config_yaml_stays_flat_and_in_order():
    path = LEGACY / "run_complete" / "config.yaml"
    written = yaml.safe_load(path.read_text(encoding="utf-8"))
    config = TrainConfig.from_yaml(path)
    assert list(config.to_dict()) == [f for f in written]
    assert config.to_dict() == written
    assert yaml.safe_dump(config.to_dict(), sort_keys=False) == yaml.safe_dump(written, sort_keys=False)
    assert set(SPEC_FIELDS) - set(ABSENT_WHEN_DEFAULT) <= set(written)  # fields added later are written only when set


@pytest.mark.parametrize("name", ["irm_full", "irm_lowrank"])
def test_irm_config_json_is_byte_identical(name):
    path = LEGACY / name / "irm_config.json"
    config = irm.IRMConfig.load(path.parent)
    assert (json.dumps(config.to_dict(), indent=2) + "\n").encode() == path.read_bytes()


def test_irm_train_shape_flags_take_help_from_the_spec():
    from irm.cli.app import app

    command = typer.main.get_command(app).commands["train"]
    helps = {param.name: param.help for param in command.params}
    flags = [name for name in (*SPEC_FIELDS, "layers") if name in helps]
    assert {"layers", "site", "rank", "depth", "width_multiplier"} <= set(flags)
    for name in flags:
        assert helps[name] == spec_help(name), name
    for f in dataclasses.fields(IRMSpec):
        assert f.metadata["help"], f.name
