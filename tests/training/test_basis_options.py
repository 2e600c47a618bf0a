"""The basis-test options of `irm train`: SGD, output rotations and host edits, recorded in
the run and in irm_config.json, and analysed in both bases."""

import csv
import json

import pytest
import torch
import yaml

import irm
from conftest import write_qa
from irm.analysis.pipeline import AnalyzeOptions, analyze
from irm.training.config import TrainConfig
from irm.training.run import train


@pytest.mark.slow
def test_sgd_is_rotation_equivariant_and_everything_is_recorded(tmp_path):
    """SGD with momentum from a zero output layer is equivariant under a fixed orthogonal
    change of the output basis: with and without R the host receives the same vectors (up
    to rounding), a check of both the rotation and the optimizer. The run records the
    optimizer, the rotation and the host edit, and `analyze` reads the run in both bases."""
    data = write_qa(tmp_path / "qa.jsonl", n=24)
    common = dict(host="tiny-random-llama", data=str(data), batch_size=8, max_steps=3, optimizer="sgd", lr=0.5, layers="1,3", log_every=1)
    common.update(val_fraction=0.0, test_fraction=0.0, host_edit="fold-norm")
    plain = train(TrainConfig(**common, out=str(tmp_path / "plain")), progress=False)
    rotated = train(TrainConfig(**common, output_rotation=1, out=str(tmp_path / "rotated")), progress=False)
    saved = json.loads((rotated.irm_dir / "irm_config.json").read_text())
    assert saved["output_rotation"] == 1 and saved["host"]["edit"] == "fold-norm"
    assert saved["extra"]["optimizer"] == {"name": "sgd", "lr": 0.5, "momentum": 0.9}
    assert yaml.safe_load((tmp_path / "rotated" / "config.yaml").read_text())["optimizer"] == "sgd"
    with open(next((tmp_path / "rotated").glob("logs/csv*/metrics.csv"))) as fh:
        assert any(r.get("lr-SGD") for r in csv.DictReader(fh))

    host = irm.load_host("tiny-random-llama", device="cpu", edit="fold-norm")
    a = irm.IRM.from_pretrained(plain.irm_dir, host)
    b = irm.IRM.from_pretrained(rotated.irm_dir, host)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert a(x).abs().max() > 1e-3, "the IRM trained"
        assert torch.allclose(a(x), b(x), atol=1e-5 * float(a(x).abs().max()) + 1e-7)
        assert not torch.allclose(b.own_output(x), b(x), atol=1e-4)

    options = AnalyzeOptions(k=3, token_plots=0, frames=0, host_outliers=False, prompt_limit=2, max_new_tokens=3, logit_lens=True)
    summary = analyze([tmp_path / "rotated"], tmp_path / "analysis", options)
    assert summary["irm_basis"]["rotated"] and summary["logit_lens"]["direct_effect_share"][2] == pytest.approx(1.0, abs=1e-4)
    assert (tmp_path / "analysis" / "heatmap_mean_irm_basis.png").is_file()
