"""`irm study`: the battery end to end through the real executable on a tiny host, killed
with SIGKILL in the middle and resumed; the guards on its folder; its settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from irm.errors import IRMError
from irm.report.html import build_report
from irm.study import StudyConfig, StudyDir, run_study
from irm.study.config import STUDY_FORMAT
from irm.study.findings import chance_jaccard
from irm.study.runner import is_study_folder, study_runs, study_status

IRM_BIN = str(Path(sys.executable).parent / "irm")
SRC = str(Path(__file__).resolve().parents[2] / "src")
TINY = "tiny-random-llama"
# Small enough for seconds on a CPU; --max-length 256 lets the byte-level tokenizer's rows
# keep answer tokens (so the gradient and the losses are real numbers).
TINY_SETTINGS = dict(
    alignments=["anger", "joy"],
    seeds=1,
    layers=["all", "0-1"],
    steps=4,
    batch_size=4,
    max_rows=40,
    max_length=256,
    checkpoint_every=1,
    record_prompts=2,
    max_new_tokens=6,
    top_k=4,
    neutral_prompts=2,
    gradient_rows=4,
    ablation_k=2,
    ablation_draws=1,
    ablation_prompts=2,
    ablation_new_tokens=6,
)


def _args(out: Path, *extra: str) -> list[str]:
    flags = []
    for key, value in TINY_SETTINGS.items():
        flags += ["--" + key.replace("_", "-"), ",".join(value) if isinstance(value, list) else str(value)]
    return [IRM_BIN, "study", TINY, "--out", str(out), *flags, "--no-progress", "--json", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_study_killed_with_sigkill_resumes_and_writes_findings_and_report(tmp_path):
    out = tmp_path / "study"
    runs = study_runs(StudyConfig(host=TINY, out=str(out), **TINY_SETTINGS))
    first = runs[0].run_dir / "summary.json"
    # with two of the basis tests (docs/findings.md 6): given once, recorded in study.json, kept by --resume
    basis = ["--output-rotation", "1", "--host-edit", "permute:1"]
    proc = subprocess.Popen(_args(out, *basis), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 120
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.is_file(), proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGKILL)  # the next run is starting or training
    proc.communicate()
    assert not (out / "findings.json").exists() and not StudyDir(out).stage("train").exists()
    status = study_status(StudyConfig(host=TINY, out=str(out), **TINY_SETTINGS))  # what `irm study --list` shows
    assert status["runs"][0]["status"] == "done" and status["stages"]["train"] == "pending" and not status["findings"]
    first_summary = json.loads(first.read_text())
    first_irm = (runs[0].run_dir / "irm" / "model.safetensors").read_bytes()

    with pytest.raises(IRMError, match="already exists") as refused:  # a killed study is refused without --resume
        run_study(StudyConfig(host=TINY, out=str(out), **TINY_SETTINGS))
    assert "--resume" in refused.value.hint

    done = subprocess.run(_args(out, "--resume"), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    findings = json.loads(done.stdout)
    assert findings == json.loads((out / "findings.json").read_text())
    # the run finished before the kill was kept as it was, not trained again
    assert json.loads(first.read_text()) == first_summary
    assert (runs[0].run_dir / "irm" / "model.safetensors").read_bytes() == first_irm
    assert all(StudyDir(out).stage(s).is_file() for s in ("train", "record", "analysis", "gradients", "ablation"))

    assert set(findings) >= {"format", "host", "settings", "row", "runs", "ablation", "recurrence", "stages", "total_seconds"}
    row = findings["row"]
    assert set(row) >= {"striation", "top_index", "consistency", "host_outliers", "ablation", "gradient", "tokens_per_second", "test_loss"}
    assert [r["name"] for r in findings["runs"]] == [r.name for r in runs]
    assert findings["runs"][0]["tokens_per_second"] == first_summary["real_tokens_per_second"]
    assert all(r["steps"] == 4 and r["tokens_per_second"] > 0 for r in findings["runs"])
    assert set(row["striation"]) == {"all", "0-1"}
    for layers, stats in row["striation"].items():  # noise level (H-1)/(L*H-1), hidden 64, 4 or 2 layers
        n = 4 if layers == "all" else 2
        assert stats["noise_level"] == pytest.approx(63 / (n * 64 - 1)) and 0 < stats["min"] <= stats["max"] <= 1
    top = row["top_index"]
    assert any(top["index"] in r["top_indices"] for r in findings["runs"])
    assert 1 <= top["first_in_runs"] <= top["in_top_k_runs"] <= 4 and top["even_share"] == pytest.approx(1 / 64)
    assert row["consistency"]["chance_jaccard"] == pytest.approx(chance_jaccard(4, 64))
    assert len(row["host_outliers"]["host_top"]) == 4 and row["host_outliers"]["irm_top1_rank_in_host"]["n"] == 4
    assert [a["alignment"] for a in findings["ablation"]] == ["anger", "joy"]
    assert all(len(a["indices"]) == 2 and len(a["random_k_removed"]) <= 1 for a in findings["ablation"])
    assert row["gradient"]["spearman_with_irm_profile"]["n"] == 4 and row["gradient"]["adjacent_layer_cosine"]["mean"] > 0
    # the basis tests: every run trained on the edited host through R, analysed in both bases, with the logit lens
    assert findings["settings"]["output_rotation"] == 1 and row["basis_test"] == {"output_rotation": 1, "host_edit": "permute:1"}
    assert findings["host"]["edit"] == "permute:1"
    assert all("output_rotation: 1" in (r.run_dir / "config.yaml").read_text() for r in runs)
    own = row["irm_basis"]
    assert own["runs"] == 4 and set(own["striation"]) == {"all", "0-1"} and own["consistency"]["top_k_jaccard"]["all_pairs"]["pairs"] == 6
    assert all(0 < r["irm_basis_striation"] <= 1 and len(r["irm_basis_top_indices"]) == 4 for r in findings["runs"])
    lens = row["logit_lens"]
    assert lens["top_index"]["index"] == top["index"] and len(lens["top_index"]["promoted"]) == 5
    assert set(lens["last_layer_mean_promotes"]) == {"anger", "joy"}
    assert {k: sorted(v) for k, v in lens["direct_effect_share"].items()} == {"all": ["1", "2", "4"], "0-1": ["1", "2"]}
    assert all(v["n"] == 2 for v in lens["direct_effect_share"]["all"].values())
    page = (out / "report.html").read_text()
    assert "irm study: tiny-random-llama" in page and "Findings" in page and "data:image/png;base64" in page
    assert "output rotation 1, host edit permute:1" in page and "own basis (before R)" in page and "direct effect" in page
    (out / "report.html").unlink()
    assert build_report(out) == out / "report.html" and (out / "report.html").read_text() == page  # `irm report DIR` draws the same page


def _config(out: Path, **changes) -> StudyConfig:
    return StudyConfig(host=TINY, out=str(out), **{**TINY_SETTINGS, **changes})


def _study_folder(out: Path, config: StudyConfig) -> None:
    out.mkdir(parents=True)
    StudyDir(out).config.write_text(json.dumps({"format": STUDY_FORMAT, "settings": config.to_dict()}))
    (out / "runs").mkdir()


def test_a_folder_that_is_not_a_study_is_refused_and_kept(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / ".findings.json.x1.tmp").write_text("not irm's: this folder is not a study")
    with pytest.raises(IRMError, match="already exists and is not empty") as refused:
        run_study(_config(out))
    assert "--resume" in refused.value.hint and "--overwrite" in refused.value.hint
    with pytest.raises(IRMError, match="holds files that are not an irm study"):
        run_study(_config(out), overwrite=True)
    with pytest.raises(IRMError, match="not a study folder"):
        run_study(_config(out), resume=True)
    with pytest.raises(IRMError, match="contradict"):
        run_study(_config(out), resume=True, overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == [".findings.json.x1.tmp", "notes.txt"]


def test_overwrite_replaces_only_a_study_and_resume_keeps_its_settings(tmp_path):
    out = tmp_path / "study"
    config = _config(out)
    _study_folder(out, config)
    (out / ".findings.json.abc123.tmp").write_text("")  # what a killed atomic write leaves
    (out / "runs" / ".data-anger_seed-1_layers-all.lock").write_text("")
    assert is_study_folder(out)
    (out / "runs" / "my-data.csv").write_text("question,answer\n")  # a user's file among the runs
    assert not is_study_folder(out)
    with pytest.raises(IRMError, match="not an irm study"):
        run_study(config, overwrite=True)
    assert (out / "runs" / "my-data.csv").is_file()
    with pytest.raises(IRMError, match=r"--steps was 4, now 5") as changed:
        run_study(_config(out, steps=5), resume=True)
    assert "--device" in changed.value.hint
    assert not (out / ".findings.json.abc123.tmp").exists()  # a killed study's temporary file is cleaned up


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ablation_k": 5}, "--ablation-k 5: must be between 1 and --top-k"),
        ({"seeds": 0}, "--seeds 0"),
        ({"lr": float("inf")}, "--lr inf"),
        ({"alignments": ["anger", "builtin:anger"]}, "names an alignment twice"),
        ({"layers": []}, "--layers"),
        ({"optimizer": "rmsprop"}, "--optimizer 'rmsprop': must be adam or sgd"),
        ({"momentum": 1.0}, "--momentum 1.0"),
        ({"output_rotation": -1}, "--output-rotation -1"),
        ({"host_edit": "rotate"}, "--host-edit 'rotate'"),
    ],
)
def test_bad_settings_are_refused_with_the_option_named(changes, message):
    with pytest.raises(IRMError, match=message.replace("(", r"\(")):
        StudyConfig(host=TINY, **{**TINY_SETTINGS, **changes})


def test_the_runs_are_the_grid_with_sweep_names_and_chance_jaccard_is_exact():
    runs = study_runs(StudyConfig(host=TINY, out="s", alignments=["anger", "data/my.csv"], seeds=2, layers=["all", "0-7"]))
    assert [r.name for r in runs][:4] == [
        "data-anger_seed-1_layers-all",
        "data-anger_seed-1_layers-0-7",
        "data-anger_seed-2_layers-all",
        "data-anger_seed-2_layers-0-7",
    ]
    assert runs[4].settings["data"] == "data/my.csv" and runs[0].settings["max_steps"] == 30 and len(runs) == 8
    assert chance_jaccard(1, 64) == pytest.approx(1 / 64) and chance_jaccard(5, 5) == pytest.approx(1.0)


def _main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    from irm import cli

    monkeypatch.setattr(sys, "argv", ["irm", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "0"], "bad study setting --seeds 0"),
        (["--layers", "all,0-99"], "--layers: layer 99 is out of range"),
        (["--alignments", "anger,nosuch"], "nosuch"),
        (["--prompts", "missing.csv"], "missing.csv"),
        (["--max-length", "1"], "bad training setting --max-length 1"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, flags, message):
    out = tmp_path / "new" / "study"
    code, err = _main(["study", TINY, "--out", str(out), "--layers", "all", *flags, "--no-progress"], monkeypatch, capsys)
    assert code == 2 and message in err and "error:" in err and "fix:" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # no study folder, no lock file, no parent folder


def test_basis_test_settings_are_recorded_only_when_set_and_resume_refuses_a_change(tmp_path):
    from irm.study.runner import _check_same_settings
    from irm.training.config import TrainConfig

    plain = _config(tmp_path / "plain")
    assert plain.basis_test() == {} and not {"optimizer", "momentum", "host_edit", "output_rotation"} & set(plain.to_dict())
    assert not {"optimizer", "host_edit", "output_rotation"} & set(plain.train_base())  # the runs' settings of earlier studies

    test = _config(tmp_path / "test", optimizer="sgd", lr=0.01, momentum=0.5, output_rotation=3, input_rotation=4, host_edit="Permute:2")
    assert test.basis_test() == {"optimizer": "sgd", "momentum": 0.5, "output_rotation": 3, "input_rotation": 4, "host_edit": "permute:2"}
    run = TrainConfig.from_dict({**study_runs(test)[0].settings, "out": "r"})
    assert (run.optimizer, run.momentum, run.output_rotation, run.input_rotation, run.host_edit, run.lr) == (
        "sgd",
        0.5,
        3,
        4,
        "permute:2",
        0.01,
    )
    assert StudyConfig.from_dict(test.to_dict()) == test

    out = tmp_path / "old"  # a study.json written before the basis tests existed: no such keys
    _study_folder(out, _config(out))
    assert "optimizer" not in json.loads(StudyDir(out).config.read_text())["settings"]
    _check_same_settings(StudyDir(out), _config(out))  # resumes as it was
    _check_same_settings(StudyDir(out), _config(out, optimizer="adam", host_edit="none"))  # the defaults, spelt out
    with pytest.raises(IRMError, match=r"--optimizer was adam, now sgd; --output-rotation was None, now 1"):
        run_study(_config(out, optimizer="sgd", output_rotation=1), resume=True)
