"""Nothing lost, nothing half-done (issue 15, training): --overwrite, the run lock, SIGTERM,
early stopping on resume, --resume with settings, sweep names and sweep files.

Every case checks the exit code, the message, that no traceback is printed, and which files
are left. What depends on processes (locks, signals, permissions, concurrent starts) runs the
``irm`` executable; refusals of bad settings run ``irm.cli.main`` in-process, which is the
same code without a 5-second interpreter start per case."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_main
from irm.training.config import TrainConfig
from irm.training.lock import lock_path
from irm.training.rundir import RunDir

IRM_BIN = str(Path(sys.executable).parent / "irm")
SRC = str(Path(__file__).resolve().parents[2] / "src")
TINY = "tiny-random-llama"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, **extra}


def _irm(
    args: list, *, cwd: Path | None = None, env: dict[str, str] | None = None, prefix: list[str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), IRM_BIN, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env or _env(), timeout=timeout
    )


def _main(args: list, monkeypatch, capsys) -> tuple[int, str]:
    """``irm ARGS`` in this process: (exit code, stderr), as :func:`_refused` takes them."""
    code, _, err = run_main(args, monkeypatch, capsys)
    return code, err


def _popen(args: list, **kw) -> subprocess.Popen:
    return subprocess.Popen([IRM_BIN, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), **kw)


def _refused(proc: subprocess.CompletedProcess | tuple[int, str], *phrases: str) -> str:
    code, err = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else proc
    text = " ".join(err.split())
    assert code == 2, text[-3000:]
    assert "traceback" not in text.lower(), text[-3000:]
    for phrase in phrases:
        assert phrase in text, (phrase, text[-3000:])
    return text


def _qa(path: Path, n: int = 32) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"question": f"What is item {i}?", "answer": "I am so angry! " + "furious " * (1 + i % 5)}) + "\n")
    return path


def _train_args(data: Path, out: Path | str, *extra: str) -> list:
    return ["train", "--host", TINY, "--data", data, "--out", out, "--no-progress", "--json", "--max-length", "64", *extra]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _fake_run(path: Path) -> Path:
    """A finished-looking run folder (what `irm train` writes), without training one."""
    layout = RunDir(path)
    layout.split_dir.mkdir(parents=True)
    layout.checkpoints.mkdir()
    (layout.logs / "csv").mkdir(parents=True)
    TrainConfig(host=TINY, data="qa.jsonl", out=str(path)).save(layout.config)
    for split in ("train", "validation", "test"):
        layout.split(split).write_text('{"question": "q", "answer": "a"}\n')
    layout.checkpoint.write_bytes(b"old checkpoint")
    (layout.logs / "csv" / "metrics.csv").write_text("step,train_loss\n")
    layout.summary.write_text('{"global_step": 3}\n')
    return path


# ------------------------------------------------------------------ H1: --overwrite
def test_h1_overwrite_refuses_folders_that_are_not_irm_runs_and_deletes_nothing(tmp_path):
    data = _qa(tmp_path / "qa.jsonl")
    work = tmp_path / "work"
    (work / "mydata").mkdir(parents=True)
    (work / "notes.txt").write_text("my notes")
    (work / "mydata" / "rows.csv").write_text("a,b\n")
    shutil.copy(data, work / "qa.jsonl")
    other = tmp_path / "other"
    other.mkdir()
    (other / "paper.tex").write_text("draft")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# mine")
    cases = {
        "dot": (_train_args(Path("qa.jsonl"), ".", "--overwrite"), work, ["--out .", "the current folder", "never replaces it"]),
        "not-a-run": (
            _train_args(data, other, "--overwrite"),
            tmp_path,
            ["holds files that are not irm runs", "--overwrite replaces only irm runs"],
        ),
        "home": (_train_args(data, "~", "--overwrite"), tmp_path, ["your home folder", "never replaces it"]),
        "root": (_train_args(data, "/", "--overwrite"), tmp_path, ["the root folder", "never replaces it"]),
    }
    before = {p: _tree(p) for p in (work, other, home)}
    procs = {}
    for name, (args, cwd, _) in cases.items():  # at the same time: each is refused before any slow work
        args = [str(home) if a == "~" else a for a in args]
        procs[name] = subprocess.Popen(
            [IRM_BIN, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=_env(HOME=str(home), MPLCONFIGDIR=str(tmp_path / "mpl"), XDG_CACHE_HOME=str(tmp_path / "xdg")),
        )
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        _refused((proc.returncode, err), *cases[name][2])
    for path, files in before.items():
        assert _tree(path) == files, path  # nothing deleted, nothing added
    assert not list(tmp_path.glob(".*.lock")) and not list(work.glob(".*.lock"))


# ------------------------------------------------------------------ H2: part of the old run cannot be deleted
def test_h2_overwrite_of_a_run_with_an_unwritable_part_leaves_it_intact(tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to drop root's permission override")
    run = _fake_run(tmp_path / "run")
    data = _qa(tmp_path / "qa.jsonl")
    RunDir(run).split_dir.chmod(0o555)
    before = _tree(run)
    # As root, permissions do not apply; without CAP_DAC_OVERRIDE they do, as for any user.
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    try:
        proc = _irm(_train_args(data, run, "--overwrite"), prefix=drop)
        _refused(proc, f"--out {run} cannot be replaced", "split is not writable", "nothing was deleted")
    finally:
        RunDir(run).split_dir.chmod(0o755)
    assert _tree(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.jsonl", "run"]  # no half-moved copy beside it


# ------------------------------------------------------------------ H3: one irm train per run folder
def test_h3_a_second_train_on_the_same_run_is_refused_and_the_lock_dies_with_its_process(tmp_path):
    data = _qa(tmp_path / "qa.jsonl")
    run = tmp_path / "run"
    first = _popen(_train_args(data, run, "--max-steps", "100000", "--epochs", "100000", "--checkpoint-every", "100000"))
    try:
        lock = lock_path(run)
        deadline = time.time() + 300
        while not (lock.is_file() and lock.read_text()) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        while not RunDir(run).config.is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1][-3000:]
        config_before = RunDir(run).config.read_bytes()
        again = _popen(_train_args(data, run, "--overwrite", "--seed", "7"))
        resumed = _popen(["train", "--resume", run, "--no-progress"])
        for proc, option in ((again, "--out"), (resumed, "--resume")):
            _, err = proc.communicate(timeout=300)
            _refused((proc.returncode, err), f"{option} {run} is in use", f"pid {first.pid}", "wait for that process")
        assert RunDir(run).config.read_bytes() == config_before  # the running run's files are untouched
        assert first.poll() is None
    finally:
        first.kill()  # kill -9: the kernel drops the flock with the process
        first.communicate()
    after = _irm(_train_args(data, run, "--overwrite", "--max-steps", "2", "--max-rows", "16"))
    assert after.returncode == 0, after.stderr[-3000:]
    assert json.loads(after.stdout)["global_step"] == 2
    assert not lock.exists()  # the lock file goes with the run that held it


# ------------------------------------------------------------------ H5: unique sweep run names
def test_h5_sweep_points_whose_names_collide_get_distinct_run_folders(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"out: {tmp_path / 'sw'}\nbase: {{host: {TINY}, data: qa.jsonl}}\ngrid:\n  layers: ['0-1', '0,1']\n  seed: [1]\n")
    proc = _irm(["sweep", sweep, "--list", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    names = [r["name"] for r in rows]
    assert len(set(names)) == 2 and all(n.startswith("layers-0-1_seed-1-") for n in names), names
    assert len({r["run_dir"] for r in rows}) == 2
    plain = tmp_path / "plain.yaml"  # no collision: the names of existing sweeps are unchanged
    plain.write_text(
        f"out: {tmp_path / 'p'}\nbase: {{host: {TINY}}}\ngrid:\n  data: [builtin:anger, builtin:joy]\n  layers: ['all', '0-1']\n"
    )
    proc = _irm(["sweep", plain, "--list", "--json"])
    assert [r["name"] for r in json.loads(proc.stdout)] == [
        "data-anger_layers-all",
        "data-anger_layers-0-1",
        "data-joy_layers-all",
        "data-joy_layers-0-1",
    ]
    assert not (tmp_path / "sw").exists() and not (tmp_path / "p").exists()  # --list writes nothing


# ------------------------------------------------------------------ H6: early stopping survives a resume
@pytest.mark.slow
def test_h6_resuming_a_run_that_stopped_early_trains_no_more(tmp_path):
    data = _qa(tmp_path / "qa.jsonl")
    config = tmp_path / "es.yaml"
    config.write_text("patience: 1\nepochs: 15\ngrad_clip: 1.0\n")
    run = tmp_path / "run"
    done = _irm([*_train_args(data, run, "--batch-size", "4", "--lr", "0.5", "--max-rows", "24"), config])
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["stopped_early"] and summary["epochs_completed"] < 15, summary
    lost = tmp_path / "lost"
    shutil.copytree(run, lost)
    shutil.rmtree(RunDir(lost).irm)
    RunDir(lost).summary.unlink()
    again = _irm(["train", "--resume", lost, "--no-progress", "--json"])
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(again.stdout)
    assert resumed["stopped_early"] is True
    assert (resumed["global_step"], resumed["epochs_completed"]) == (summary["global_step"], summary["epochs_completed"])
    ref, got = load_file(str(RunDir(run).irm / "model.safetensors")), load_file(str(RunDir(lost).irm / "model.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


# ------------------------------------------------------------------ H9: SIGTERM (pre-emption)
@pytest.mark.slow
def test_h9_sigterm_saves_a_checkpoint_says_resume_and_the_resumed_run_matches(tmp_path):
    data = _qa(tmp_path / "qa.jsonl", n=96)
    common = ["--max-steps", "150", "--batch-size", "4", "--checkpoint-every", "7", "--lr", "1e-3", "--seed", "3"]
    reference = _irm(_train_args(data, tmp_path / "ref", *common))
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "run"
    proc = _popen(_train_args(data, run, *common))
    deadline = time.time() + 300
    while not RunDir(run).checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "training finished before SIGTERM"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    _refused((proc.returncode, err), "stopped by SIGTERM at step", "checkpoint (step", f"irm train --resume {run}")
    step = torch.load(RunDir(run).checkpoint, weights_only=True)["global_step"]
    assert 7 <= step < 150 and f"(step {step})" in " ".join(err.split())
    assert not RunDir(run).irm.exists() and not RunDir(run).summary.exists()
    resumed = _irm(["train", "--resume", run, "--no-progress", "--json"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["global_step"] == 150
    ref, got = load_file(str(RunDir(tmp_path / "ref").irm / "model.safetensors")), load_file(str(RunDir(run).irm / "model.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


# ------------------------------------------------------------------ --resume with settings
def test_resume_refuses_settings_flags_and_names_them(tmp_path, monkeypatch, capsys):
    run = _fake_run(tmp_path / "run")
    before = _tree(run)
    proc = _main(
        ["train", "--resume", run, "--lr", "0.1", "--data", "x.csv", "--host", TINY, "--max-steps", "5", "--no-progress"],
        monkeypatch,
        capsys,
    )
    text = _refused(
        proc, f"--resume {run} continues the run with the settings saved in it", "--lr", "--data", "--host", "--max-steps", "drop them"
    )
    assert "--devices" in text  # says what does apply
    assert _tree(run) == before
    # where to run may change: those flags pass this check (here the run is not one: the usual message)
    plain = tmp_path / "plain"
    plain.mkdir()
    proc = _main(
        ["train", "--resume", plain, "--devices", "1", "--num-nodes", "1", "--strategy", "auto", "--no-progress", "--json"],
        monkeypatch,
        capsys,
    )
    _refused(proc, "is not a run directory")


# ------------------------------------------------------------------ --layers far out of range
def test_layers_far_out_of_range_say_so_not_out_of_memory(tmp_path, monkeypatch, capsys):
    data = _qa(tmp_path / "qa.jsonl")
    proc = _main(_train_args(data, tmp_path / "run", "--layers", "0-99999999999"), monkeypatch, capsys)
    text = _refused(proc, "layer 99999999999 is out of range")
    assert "memory" not in text
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ sweep files and --index
@pytest.mark.parametrize(
    "content, phrases",
    [
        ("hello\n", ["a sweep file is a mapping with out, base and grid, not the str 'hello'"]),
        ("- 1\n- 2\n", ["a sweep file is a mapping", "not a list"]),
        ("grid: [1, 2]\n", ["grid must be a mapping", "not a list"]),
        ("grid: seed\n", ["grid must be a mapping", "not the str 'seed'"]),
        ("base: 3\ngrid: {seed: [1]}\n", ["base must be a mapping", "not the int '3'"]),
    ],
)
def test_a_sweep_file_that_is_not_a_mapping_gets_a_plain_message(tmp_path, content, phrases, monkeypatch, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(content)
    monkeypatch.chdir(tmp_path)
    text = _refused(_main(["sweep", sweep, "--list"], monkeypatch, capsys), "s.yaml", *phrases)
    assert "unknown sweep key" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_sweep_index_out_of_range_leaves_no_sweep_folder(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"out: {tmp_path / 'sw'}\nbase: {{host: {TINY}, data: qa.jsonl}}\ngrid: {{seed: [1, 2]}}\n")
    _refused(_main(["sweep", sweep, "--index", "7"], monkeypatch, capsys), "--index 7 is out of range", "the sweep has 2 runs (0-1)")
    assert not (tmp_path / "sw").exists()
