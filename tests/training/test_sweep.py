"""`irm sweep`: a grid of ordinary run directories, resumable, one run per cluster job."""

import json

import pytest

from conftest import write_qa
from irm.errors import IRMError
from irm.training.sweep import expand, run_sweep


def _sweep_file(tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", n=40)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"out: {tmp_path / 'sweep'}\n"
        f"base: {{host: tiny-random-llama, data: {data}, max_steps: 2, batch_size: 4}}\n"
        "grid:\n  seed: [1, 2]\n  layers: ['all', '0-1']\n"
    )
    return path


def test_sweep_runs_every_combination_and_resumes(tmp_path):
    path = _sweep_file(tmp_path)
    out, runs = expand(path)
    assert [r.name for r in runs] == ["seed-1_layers-all", "seed-1_layers-0-1", "seed-2_layers-all", "seed-2_layers-0-1"]
    assert all(r.status == "pending" for r in runs)
    rows = run_sweep(path, index=1, progress=False)
    assert [r["name"] for r in rows] == ["seed-1_layers-0-1"]
    assert json.loads((runs[1].run_dir / "summary.json").read_text())["layers"] == [0, 1]
    rows = run_sweep(path, progress=False)
    assert [r["was"] for r in rows] == ["pending", "done", "pending", "pending"]
    assert all((r.run_dir / "irm" / "model.safetensors").is_file() for r in runs)
    assert (out / "sweep.yaml").is_file()


def test_sweep_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {seed: [1]}\nbase: {learning_rate: 1}\n")
    with pytest.raises(IRMError, match="learning_rate"):
        expand(bad)
    bad.write_text("grid: {}\n")
    with pytest.raises(IRMError, match="empty"):
        expand(bad)
    with pytest.raises(IRMError, match="out of range"):
        run_sweep(_sweep_file(tmp_path), index=9)
