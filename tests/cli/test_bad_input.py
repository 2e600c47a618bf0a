"""Bad input, faults and untrusted files.

Every command refuses bad input with a short message that names the file, row or option,
says what is wrong and how to fix it, exits with code 2, prints no traceback (unless
``--debug``) and leaves nothing behind. Training faults (NaN loss, NaN weights, a full disk,
running out of memory) stop cleanly and keep the last good checkpoint; pickles are read
only with ``weights_only=True``.

Most cases run ``irm.cli.app.main`` in-process (fast); a few run the real ``irm`` executable.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import irm
from conftest import run_main  # noqa: F401  (used here and by test_fuzz)

IRM_BIN = str(Path(sys.executable).parent / "irm")
TINY = "tiny-random-llama"


# ----------------------------------------------------------------------------- helpers


def run_bin(args, cwd) -> tuple[int, str, str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([IRM_BIN, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def flat(text: str) -> str:
    return " ".join(text.split()).lower()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` with its size and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (p.is_dir(), 0 if p.is_dir() else st.st_size, 0 if p.is_dir() else st.st_mtime_ns)
    return out


def write_qa(path: Path, n: int = 12, long_answer_at: int | None = None) -> Path:
    rows = ["question,answer"]
    for i in range(n):
        answer = "x" * 600 if i == long_answer_at else f"answer number {i} is short"
        rows.append(f"question {i}?,{answer}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@functools.cache
def tiny_host():
    return irm.load_host(TINY, device="cpu")


def make_irm_dir(path: Path) -> Path:
    return irm.IRM.for_host(tiny_host(), "all", seed=0).save_pretrained(path)


class Payload:
    """Runs ``open(marker, "w")`` when unpickled by an unsafe loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path: Path, marker: Path, **extra) -> Path:
    torch.save({"state_dict": {"model.irm.basic_forward.0.weight": torch.zeros(2, 2)}, "note": Payload(marker), **extra}, path)
    return path


def train_args(data, out, *extra):
    return ["train", "--host", TINY, "--data", data, "--out", out, "--no-progress", "--batch-size", "2", "--max-steps", "2", *extra]


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    prepare: Callable[[Path, pytest.MonkeyPatch], list]
    """Write the inputs under tmp and return the command line."""
    expect: list[str]
    """Fragments of the message (case-insensitive, whitespace-normalised)."""
    fix: bool = True
    """The message carries a ``fix:`` line."""
    absent: list[str] = field(default_factory=list)
    """Paths (relative to tmp) that must not exist afterwards."""
    real_process: bool = False


def _file(name: str, content: str | bytes):
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    return make


def _unreadable(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    path = write_qa(tmp / "secret.csv")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: simulate the kernel's refusal for this one path
        real = Path.read_bytes

        def read_bytes(self):
            if self.name == "secret.csv":
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return ["data", "check", path]


def _irm_with_config(tmp: Path, edit: Callable[[dict], None]) -> Path:
    d = make_irm_dir(tmp / "irm")
    cfg = json.loads((d / "irm_config.json").read_text())
    edit(cfg)
    (d / "irm_config.json").write_text(json.dumps(cfg))
    return d


def _truncated_irm(tmp: Path) -> Path:
    d = make_irm_dir(tmp / "irm")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return d


GOOD = lambda tmp: write_qa(tmp / "qa.csv")  # noqa: E731

CASES = [
    # --- data files: missing, unreadable, empty, malformed, not UTF-8, columns, rows
    Case(
        "train-missing-data",
        lambda t, m: train_args(t / "nope.csv", t / "run"),
        ["nope.csv", "file not found", "builtin:"],
        absent=["run"],
        real_process=True,
    ),
    Case(
        "check-directory", lambda t, m: (t / "folder.csv").mkdir() or ["data", "check", t / "folder.csv"], ["folder.csv", "is a directory"]
    ),
    Case("check-unreadable", _unreadable, ["secret.csv", "permission denied", "make the file readable"]),
    Case("check-empty-csv", lambda t, m: ["data", "check", _file("empty.csv", "")(t)], ["empty.csv", "the file is empty"]),
    Case(
        "train-empty-jsonl", lambda t, m: train_args(_file("empty.jsonl", "\n \n")(t), t / "run"), ["empty.jsonl", "empty"], absent=["run"]
    ),
    Case(
        "train-malformed-jsonl",
        lambda t, m: train_args(
            _file("bad.jsonl", '{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n{"question": "e", "answer": }\n')(t),
            t / "run",
        ),
        ["bad.jsonl", "line 3", "not valid json", "one json object"],
        absent=["run"],
    ),
    Case(
        "check-jsonl-not-object",
        lambda t, m: ["data", "check", _file("list.jsonl", '{"text": "a"}\n[1, 2]\n')(t)],
        ["list.jsonl", "line 2", "not a json object"],
    ),
    Case(
        "check-malformed-csv",
        lambda t, m: ["data", "check", _file("bad.csv", 'question,answer\n"a","b"\n"c","d","e"\n')(t)],
        ["bad.csv", "malformed csv", "line 3", "quote fields"],
    ),
    Case(
        "train-non-utf8-csv",
        lambda t, m: train_args(_file("latin.csv", b"question,answer\nhi,there\ncaf\xe9?,ok\n")(t), t / "run"),
        ["latin.csv", "not utf-8", "line 3", "re-save the file as utf-8"],
        absent=["run"],
    ),
    Case(
        "train-misspelt-column",
        lambda t, m: train_args(_file("typo.csv", "questoin,answer\nhi,there\n")(t), t / "run"),
        ["typo.csv", "'questoin'", "rename column 'questoin' to 'question'"],
        absent=["run"],
    ),
    Case(
        "check-misspelt-text-column",
        lambda t, m: ["data", "check", _file("t.jsonl", '{"txt": "hello"}\n')(t)],
        ["t.jsonl", "'txt'", "rename column 'txt' to 'text'"],
        fix=True,
    ),
    Case(
        "train-empty-rows",
        lambda t, m: train_args(_file("holes.csv", "question,answer\na?,b\nc?,\nd?,e\n,f\n")(t), t / "run"),
        ["holes.csv", "2 empty row(s)", "line(s) 3, 5", "irm data check"],
        absent=["run"],
    ),
    Case(
        "check-empty-rows-report",
        lambda t, m: ["data", "check", _file("holes.csv", "question,answer\na?,b\nc?,\nd?,e\n")(t)],
        ["empty question/answer at line(s) 3", "fill them in"],
        fix=False,
    ),
    Case(
        "check-unknown-file-type",
        lambda t, m: ["data", "check", _file("rows.txt", "question,answer\n")(t)],
        ["rows.txt", "unknown file type '.txt'", ".csv, .jsonl or .parquet"],
    ),
    Case(
        "train-unknown-builtin",
        lambda t, m: train_args("builtin:angr", t / "run"),
        ["no built-in dataset 'angr'", "did you mean builtin:anger"],
        absent=["run"],
    ),
    # --- hosts, IRMs, layers, strength
    Case(
        "train-unknown-host",
        lambda t, m: train_args(GOOD(t), t / "run", "--host", "tiny-random-lama"),
        ["unknown host 'tiny-random-lama'", "tiny-random-llama"],
        absent=["run"],
    ),
    Case(
        "check-unknown-host",
        lambda t, m: ["data", "check", GOOD(t), "--host", "no-such-host"],
        ["unknown host 'no-such-host'", "built-in hosts"],
    ),
    Case(
        "generate-irm-for-another-host",
        lambda t, m: ["generate", "--host", "tiny-random-gpt2", "--irm", make_irm_dir(t / "irm"), "-p", "hi"],
        ["made for host 'tiny-random-llama'", "does not fit host 'tiny-random-gpt2'", "--host tiny-random-llama", "--force"],
    ),
    Case(
        "train-layers-open-range",
        lambda t, m: train_args(GOOD(t), t / "run", "--layers", "0-"),
        ["bad layer spec '0-'", "cannot read '0-'", "'0-7'"],
        absent=["run"],
    ),
    Case(
        "train-layer-out-of-range",
        lambda t, m: train_args(GOOD(t), t / "run", "--layers", "99"),
        ["layer 99 is out of range", "4 layers", "between 0 and 3"],
        absent=["run"],
    ),
    Case(
        "train-layers-not-a-number",
        lambda t, m: train_args(GOOD(t), t / "run", "--layers", "x"),
        ["bad layer spec 'x'", "'all'"],
        absent=["run"],
    ),
    Case(
        "generate-strength-nan",
        lambda t, m: ["generate", "--host", TINY, "--strength", "nan", "-p", "hi"],
        ["strength must be a finite number", "nan", "e.g. 0, 0.5, 1"],
        real_process=True,
    ),
    Case(
        "generate-strength-inf",
        lambda t, m: ["generate", "--host", TINY, "--strength", "inf", "-p", "hi"],
        ["strength must be a finite number", "inf"],
    ),
    Case(
        "generate-compare-without-irm",
        lambda t, m: ["generate", "--host", TINY, "--compare", "-p", "hi"],
        ["--compare needs an irm", "--irm dir"],
    ),
    Case(
        "generate-missing-irm",
        lambda t, m: ["generate", "--host", TINY, "--irm", t / "nothere", "-p", "hi"],
        ["nothere", "not found", "irm train"],
    ),
    Case(
        "generate-corrupted-safetensors",
        lambda t, m: ["generate", "--host", TINY, "--irm", _truncated_irm(t), "-p", "hi"],
        ["model.safetensors", "corrupted", "re-save or re-train"],
    ),
    Case(
        "generate-irm-config-unknown-key",
        lambda t, m: ["generate", "--host", TINY, "-p", "hi", "--irm", _irm_with_config(t, lambda c: c.update(layer=[0]))],
        ["irm_config.json", "unknown irm config key 'layer'", "did you mean 'layers'"],
    ),
    Case(
        "generate-irm-config-not-json",
        lambda t, m: [
            "generate",
            "--host",
            TINY,
            "-p",
            "hi",
            "--irm",
            (make_irm_dir(t / "irm") / "irm_config.json").write_text("{oops") and t / "irm",
        ],
        ["irm_config.json", "not valid json"],
    ),
    Case(
        "generate-prompt-longer-than-context",
        lambda t, m: ["generate", "--host", "tiny-random-gpt2", "-p", "y" * 600],
        ["prompt 1 is", "context of 512", "shorten the prompt"],
    ),
    Case(
        "generate-max-new-tokens-zero",
        lambda t, m: ["generate", "--host", TINY, "-p", "hi", "--max-new-tokens", "0"],
        ["invalid value for '--max-new-tokens'", "greater than or equal"],
        fix=False,
    ),
    # --- outputs that exist
    Case(
        "train-out-exists",
        lambda t, m: (t / "run").mkdir() or (t / "run" / "keep.txt").write_text("mine") and train_args(GOOD(t), t / "run"),
        ["output directory", "run already exists", "--overwrite", "--resume"],
    ),
    Case(
        "import-out-exists",
        lambda t, m: (t / "out").mkdir()
        or (t / "out" / "keep.txt").write_text("mine")
        and ["import-reference", _file("r.ckpt", b"x")(t), "--host", TINY, "--out", t / "out"],
        ["--out", "already exists and is not empty", "--overwrite"],
    ),
    Case(
        "import-out-is-a-file",
        lambda t, m: ["import-reference", _file("r.ckpt", b"x")(t), "--host", TINY, "--out", _file("f", "x")(t)],
        ["is a file, not a folder", "another --out"],
    ),
    Case(
        "synthesize-out-exists",
        lambda t, m: ["data", "synthesize", "--emotion", "anger", "--method", "framing", "--out", GOOD(t)],
        ["qa.csv already exists", "--overwrite"],
    ),
    # --- configs and settings
    Case(
        "train-yaml-unknown-key",
        lambda t, m: ["train", _file("cfg.yaml", "host: tiny-random-llama\nlearning_rate: 0.001\n")(t), "--out", t / "run"],
        ["cfg.yaml", "unknown key 'learning_rate'", "did you mean 'lr'"],
        absent=["run"],
        real_process=True,
    ),
    Case(
        "train-yaml-misspelt-key",
        lambda t, m: ["train", _file("cfg.yaml", "batch_sise: 4\n")(t), "--out", t / "run"],
        ["unknown key 'batch_sise'", "did you mean 'batch_size'"],
        absent=["run"],
    ),
    Case(
        "train-bad-yaml",
        lambda t, m: ["train", _file("bad.yaml", "lr: [1e-4\nseed: 3\n")(t), "--out", t / "run"],
        ["bad.yaml", "not valid yaml", "line"],
        absent=["run"],
    ),
    Case(
        "train-yaml-wrong-type",
        lambda t, m: ["train", _file("cfg.yaml", "batch_size: eight\n")(t), "--out", t / "run"],
        ["cfg.yaml", "batch_size must be a whole number", "'eight'"],
        absent=["run"],
    ),
    Case(
        "train-missing-config",
        lambda t, m: ["train", t / "nope.yaml", "--out", t / "run"],
        ["nope.yaml", "config file not found"],
        absent=["run"],
    ),
    Case(
        "train-batch-size-zero",
        lambda t, m: train_args(GOOD(t), t / "run", "--batch-size", "0"),
        ["--batch-size 0", "must be >= 1", "e.g. --batch-size 8"],
        absent=["run"],
    ),
    Case("train-negative-lr", lambda t, m: train_args(GOOD(t), t / "run", "--lr", "-1"), ["--lr -1", "positive number"], absent=["run"]),
    Case(
        "train-unknown-precision",
        lambda t, m: train_args(GOOD(t), t / "run", "--precision", "fp8"),
        ["--precision 'fp8'", "bf16-mixed"],
        absent=["run"],
    ),
    # --- rows and context
    Case(
        "train-max-length-below-prompt",
        lambda t, m: train_args(GOOD(t), t / "run", "--max-length", "8"),
        ["no training row fits in --max-length 8", "raise --max-length to at least", "--loss-on all"],
        absent=["run"],
    ),
    Case(
        "train-rows-longer-than-context",
        lambda t, m: train_args(
            write_qa(t / "long.csv", long_answer_at=1), t / "run", "--host", "tiny-random-gpt2", "--max-length", "2000"
        ),
        ["longer than host tiny-random-gpt2's context of 512 tokens", "line(s) 3", "--max-length 512 or less"],
        absent=["run"],
    ),
    Case(
        "train-lr-overflows",
        lambda t, m: train_args(GOOD(t), t / "run", "--lr", "1e38"),
        ["optimizer update overflowed", "--lr 1e+38 is far too large", "lower --lr"],
        absent=["run"],
    ),
    Case(
        "check-rows-longer-than-context",
        lambda t, m: ["data", "check", write_qa(t / "long.csv", long_answer_at=1), "--host", "tiny-random-gpt2", "--max-length", "2000"],
        ["longer than the host's context of 512 tokens at line(s) 3", "--max-length 512 or less"],
        fix=False,
    ),
    Case(
        "train-batch-bigger-than-data",
        lambda t, m: train_args(GOOD(t), t / "run", "--batch-size", "64"),
        ["training rows", "global batch of 64", "lower --batch-size"],
        absent=["run"],
    ),
    Case(
        "train-resume-not-a-run",
        lambda t, m: (t / "plain").mkdir() or ["train", "--resume", t / "plain"],
        ["plain is not a run directory", "--out directory of an earlier"],
    ),
    # --- score, import-reference, synthesize
    Case("score-missing-file", lambda t, m: ["score", t / "missing.csv"], ["missing.csv", "file not found"]),
    Case("score-empty-file", lambda t, m: ["score", _file("empty.jsonl", "")(t)], ["empty.jsonl", "empty"]),
    Case(
        "import-missing-checkpoint",
        lambda t, m: ["import-reference", t / "nope.ckpt", "--host", TINY, "--out", t / "out"],
        ["nope.ckpt", "not found"],
        absent=["out"],
    ),
    Case(
        "import-garbage-checkpoint",
        lambda t, m: ["import-reference", _file("junk.ckpt", b"\x00garbage" * 50)(t), "--host", TINY, "--out", t / "out"],
        ["junk.ckpt", "not a readable pytorch checkpoint", "corrupted"],
        absent=["out"],
    ),
    Case(
        "import-malicious-pickle",
        lambda t, m: ["import-reference", write_malicious(t / "evil.ckpt", t / "pwned"), "--host", TINY, "--out", t / "out"],
        ["refused to load", "evil.ckpt", "pickled python objects", "weights_only=true"],
        absent=["out", "pwned"],
    ),
    Case(
        "synthesize-bad-suffix",
        lambda t, m: ["data", "synthesize", "--emotion", "anger", "--out", t / "out.txt"],
        ["out.txt", "unknown output type '.txt'", ".csv, .jsonl or .parquet"],
    ),
    Case(
        "synthesize-unknown-emotion",
        lambda t, m: ["data", "synthesize", "--emotion", "rage", "--out", t / "new" / "o.csv"],
        ["unknown emotion 'rage'", "anger"],
        absent=["new"],
    ),
    Case(
        "synthesize-missing-source",
        lambda t, m: [
            "data",
            "synthesize",
            "--emotion",
            "anger",
            "--method",
            "framing",
            "--source",
            t / "nope.csv",
            "--out",
            t / "new" / "deeper" / "o.csv",
        ],
        ["nope.csv", "file not found"],
        absent=["new"],
    ),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {c.id.split("-")[0] for c in CASES}
    assert {"train", "check", "generate", "score", "import", "synthesize"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(case: Case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a stray relative output would show up in the snapshot
    args = case.prepare(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    if case.real_process:
        code, out, err = run_bin(args, cwd=tmp_path)
    else:
        code, out, err = run_main(args, monkeypatch, capsys)
    text = flat(out + err)
    assert code == 2, out + err
    for fragment in case.expect:
        assert fragment.lower() in text, f"{fragment!r} not in: {out + err}"
    if case.fix:
        assert "fix:" in text, out + err
    assert "traceback" not in text, out + err
    assert snapshot(tmp_path) == before, "the command wrote or changed files"
    for name in case.absent:
        assert not (tmp_path / name).exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["irm", "--debug", "generate", "--host", TINY, "--strength", "nan", "-p", "hi"])
    with pytest.raises(irm.IRMError, match="strength must be a finite number"):
        irm.cli.main()


def test_hosts_json_lists_the_tiny_hosts(monkeypatch, capsys):
    code, out, _ = run_main(["hosts", "--json"], monkeypatch, capsys)
    assert code == 0
    names = {row["name"] for row in json.loads(out)}
    assert {TINY, "tiny-random-gpt2", "smollm2-135m-instruct"} <= names


# ----------------------------------------------------------------------------- disk full


class _FullDisk:
    """A file object that writes half of what it is given and then fails with ENOSPC."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data) -> int:
        view = memoryview(data)
        self._fh.write(view[: max(1, len(view) // 2)])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()
        return False


def fill_disk(monkeypatch, folder: Path, *, after: int = 0) -> list[str]:
    """Make writes to temporary files under ``folder`` fail with ENOSPC (after ``after``
    successful files). Returns the names of the files that failed."""
    real = os.fdopen
    failed: list[str] = []
    seen = [0]

    def fdopen(fd, *args, **kwargs):
        fh = real(fd, *args, **kwargs)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return fh
        if target.startswith(str(folder)) and "w" in (args[0] if args else kwargs.get("mode", "r")):
            seen[0] += 1
            if seen[0] > after:
                failed.append(Path(target).name)
                return _FullDisk(fh)
        return fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    return failed


def fill_disk_for_safetensors(monkeypatch) -> list[str]:
    """Make safetensors' (Rust) writer fail as it does on a full disk, after writing half."""
    from safetensors import SafetensorError
    from safetensors.torch import save

    import irm.core.network

    failed: list[str] = []

    def save_file(tensors, filename, metadata=None):
        data = save(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        failed.append(Path(filename).name)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(irm.core.network, "save_file", save_file)
    return failed


def _reference_checkpoint(tmp_path: Path) -> Path:
    from reference_checkpoints import reference_tensors, write_checkpoint

    return write_checkpoint(tmp_path / "ref.ckpt", tiny_host(), reference_tensors(2, seed=1), hparams={"IRM_layers": [2, 3]})


@pytest.mark.parametrize("where", ["weights", "config"])
def test_disk_full_keeps_the_previous_irm_and_leaves_no_temp_file(where, tmp_path, monkeypatch, capsys):
    # a good IRM already in --out; importing another one over it hits a full disk
    host = tiny_host()
    ckpt = _reference_checkpoint(tmp_path)
    out = tmp_path / "irm"
    make_irm_dir(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    failed = fill_disk_for_safetensors(monkeypatch) if where == "weights" else fill_disk(monkeypatch, out)
    code, _, err = run_main(["import-reference", ckpt, "--host", TINY, "--out", out, "--overwrite"], monkeypatch, capsys)
    monkeypatch.undo()
    assert failed, "the simulated full disk was never hit"
    assert code == 2, err
    text = flat(err)
    assert "disk full while writing" in text and ("model.safetensors" if where == "weights" else "irm_config.json") in text
    assert "free space" in text and "traceback" not in text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old IRM intact (no mix), no temp file
    irm.IRM.from_pretrained(out, host)  # and still loads


def test_disk_full_on_a_new_out_leaves_nothing(tmp_path, monkeypatch, capsys):
    ckpt = _reference_checkpoint(tmp_path)
    failed = fill_disk_for_safetensors(monkeypatch)
    code, _, err = run_main(["import-reference", ckpt, "--host", TINY, "--out", tmp_path / "new" / "irm"], monkeypatch, capsys)
    assert failed and code == 2 and "disk full" in flat(err)
    assert not (tmp_path / "new").exists()


def test_disk_full_in_save_pretrained_raises_a_clear_error(tmp_path, monkeypatch):
    model = irm.IRM.for_host(tiny_host(), "0-1", seed=0)
    model.save_pretrained(tmp_path / "irm")
    good = {p.name: p.read_bytes() for p in (tmp_path / "irm").iterdir()}
    fill_disk_for_safetensors(monkeypatch)
    with pytest.raises(irm.IRMError, match="disk full") as info:
        irm.IRM.for_host(tiny_host(), "0-3", seed=5).save_pretrained(tmp_path / "irm")
    assert isinstance(info.value, irm.errors.DiskFullError)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in (tmp_path / "irm").iterdir()} == good


def test_disk_full_during_training_keeps_the_last_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    data = write_qa(tmp_path / "qa.csv", n=24)
    run = tmp_path / "run"
    failed = fill_disk(monkeypatch, run / "checkpoints", after=1)  # the second checkpoint hits a full disk
    args = train_args(data, run, "--checkpoint-every", "2", "--max-steps", "6", "--json")
    code, _, err = run_main(args, monkeypatch, capsys)
    monkeypatch.undo()
    assert failed == [f for f in failed if f.startswith(".last.ckpt.")] and failed
    assert code == 2, err
    text = flat(err)
    assert "disk full while writing" in text and "last.ckpt" in text and f"irm train --resume {run}".lower() in text
    assert "traceback" not in text
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # no temp file
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not (run / "irm").exists()
    code, out, err = run_main(["train", "--resume", run, "--no-progress", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["global_step"] == 6


def test_write_errors_are_explained():
    from irm.errors import DiskFullError, write_error

    assert isinstance(write_error(OSError(errno.ENOSPC, "No space left on device"), "/x/y"), DiskFullError)
    assert isinstance(write_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "/x/y"), DiskFullError)
    assert "permission denied" in write_error(OSError(errno.EACCES, "Permission denied"), "/x/y").message
    assert "read-only" in write_error(OSError(errno.EROFS, "Read-only file system"), "/x/y").message


# ----------------------------------------------------------------------------- NaN stop


def _finite_checkpoint(path: Path) -> int:
    ckpt = torch.load(path, weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    return int(ckpt["global_step"])


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from irm.training.module import IRMTrainingModule

    real = IRMTrainingModule._loss

    def poisoned(self, batch):
        nll, count, penalty = real(self, batch)
        if self.trainer.training and self.global_step >= 3:
            nll = nll * float("nan")
        return nll, count, penalty

    monkeypatch.setattr(IRMTrainingModule, "_loss", poisoned)
    run = tmp_path / "run"
    code, _, err = run_main(
        train_args(write_qa(tmp_path / "qa.csv", n=24), run, "--checkpoint-every", "1", "--max-steps", "8"), monkeypatch, capsys
    )
    assert code == 2, err
    text = flat(err)
    assert "training loss became nan at step 3" in text
    assert "keeps the last good irm weights (step 3)" in text and "lower --lr" in text
    assert "traceback" not in text
    assert _finite_checkpoint(run / "checkpoints" / "last.ckpt") == 3
    assert not (run / "irm").exists() and not (run / "summary.json").exists()
    assert not list(run.rglob("*.tmp"))


def test_weights_broken_by_an_update_are_never_checkpointed(tmp_path, monkeypatch, capsys):
    """The loss of the step is finite, its update makes the weights NaN: the checkpoint
    after it is refused, so last.ckpt still holds the weights before."""
    from irm.training.module import IRMTrainingModule

    def on_after_backward(self):
        if self.global_step == 2:
            for p in self.irm.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))

    monkeypatch.setattr(IRMTrainingModule, "on_after_backward", on_after_backward, raising=False)
    run = tmp_path / "run"
    code, _, err = run_main(
        train_args(write_qa(tmp_path / "qa.csv", n=24), run, "--checkpoint-every", "1", "--max-steps", "8"), monkeypatch, capsys
    )
    assert code == 2, err
    text = flat(err)
    assert "irm weights became nan or infinite" in text and "after step 3" in text
    assert "(step 2)" in text
    assert _finite_checkpoint(run / "checkpoints" / "last.ckpt") == 2


def test_absurd_learning_rate_stops_with_a_clear_message(tmp_path, monkeypatch, capsys):
    """A real divergence, nothing patched: lr 1e6 makes the loss NaN within a few steps."""
    run = tmp_path / "run"
    args = train_args(write_qa(tmp_path / "qa.csv", n=24), run, "--lr", "1e6", "--checkpoint-every", "1", "--max-steps", "8")
    code, _, err = run_main(args, monkeypatch, capsys)
    assert code == 2, err
    text = flat(err)
    assert "training loss became nan" in text or "weights became nan or infinite" in text
    assert "lower --lr (now 1e+06)" in text and "traceback" not in text
    ckpt = run / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        _finite_checkpoint(ckpt)
    else:
        assert not run.exists()
    assert not (run / "irm").exists()


# ----------------------------------------------------------------------------- out of memory


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"
        ),
    ],
    ids=["cuda", "cpu"],
)
def test_out_of_memory_names_the_options_that_reduce_it(error, tmp_path, monkeypatch, capsys):
    import lightning.pytorch as pl

    def fit(self, *args, **kwargs):
        raise error()

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    run = tmp_path / "run"
    code, _, err = run_main(train_args(write_qa(tmp_path / "qa.csv"), run, "--batch-size", "4", "--max-length", "64"), monkeypatch, capsys)
    assert code == 2, err
    text = flat(err)
    assert "out of memory while training" in text
    for option in (
        "--batch-size 2 --accumulate 2",
        "--max-length 32",
        "--rank 64",
        "--layers",
        "--precision bf16-mixed",
        "--host-dtype bfloat16",
    ):
        assert option in text, option
    assert "traceback" not in text
    assert not run.exists()  # failed before the first checkpoint: nothing left behind


def test_memory_hint_follows_the_settings():
    from irm.training.config import TrainConfig
    from irm.training.run import memory_hint

    hint = memory_hint(TrainConfig(batch_size=1, rank=8, precision="bf16-mixed", host_dtype="bfloat16", layers="2,3"))
    assert "--batch-size" not in hint and "--rank" not in hint and "--precision" not in hint and "--host-dtype" not in hint
    assert "--max-length 64" in hint and "--layers" in hint


# ----------------------------------------------------------------------------- untrusted files


def test_resume_refuses_a_malicious_or_damaged_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, _, err = run_main(
        train_args(write_qa(tmp_path / "qa.csv", n=24), run, "--checkpoint-every", "1", "--max-steps", "1"), monkeypatch, capsys
    )
    assert code == 0, err
    ckpt = run / "checkpoints" / "last.ckpt"
    good = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned"
    torch.save({**good, "global_step": 0, "note": Payload(marker)}, ckpt)
    code, _, err = run_main(["train", "--resume", run, "--no-progress"], monkeypatch, capsys)
    assert code == 2, err
    text = flat(err)
    assert "refused to load" in text and "last.ckpt" in text and "pickled python objects" in text and "weights_only=true" in text
    assert "fix:" in text and "traceback" not in text
    assert not marker.exists()
    assert ckpt.exists()  # left for the user to inspect, not deleted

    ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run_main(["train", "--resume", run, "--no-progress"], monkeypatch, capsys)
    assert code == 2, err
    assert "not a readable checkpoint" in flat(err) and "traceback" not in flat(err)


def test_source_reads_pickles_only_with_weights_only():
    """Every torch.load in irm passes weights_only=True; nothing calls pickle.load."""
    src = Path(irm.__file__).parent
    calls = 0
    for path in src.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            calls += 1
            assert "weights_only=True" in match.group(1), f"{path.name}: {match.group(0)}"
        assert not re.search(r"pickle\.loads?\(|Unpickler\(", text), path.name
    assert calls >= 2


def test_irms_load_from_safetensors_and_json_only(tmp_path, monkeypatch):
    model = make_irm_dir(tmp_path / "irm")
    assert sorted(p.name for p in model.iterdir()) == ["irm_config.json", "model.safetensors"]

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load called while loading an IRM")

    monkeypatch.setattr(torch, "load", no_pickles)
    irm.IRM.from_pretrained(tmp_path / "irm", tiny_host())


@pytest.mark.parametrize("name", ["bom.csv", "bom.jsonl"])
def test_a_byte_order_mark_is_not_bad_input(name, tmp_path):
    """Excel writes "CSV UTF-8" with a byte-order mark; it must not break the header."""
    from irm.data.rows import read_rows

    body = "question,answer\nhi?,there\n" if name.endswith(".csv") else '{"question": "hi?", "answer": "there"}\n'
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [(r.question, r.answer) for r in read_rows(path)] == [("hi?", "there")]


# ----------------------------------------------------------------------------- H4: resumed syntheses


def _source(tmp: Path, n: int = 40) -> Path:
    rows = ["question,answer"] + [f"what is thing {i}?,thing {i} is a plain object made of wood" for i in range(n)]
    (tmp / "src.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp / "src.csv"


def _synth(tmp: Path, emotion: str, *extra) -> list:
    return [
        "data",
        "synthesize",
        "--emotion",
        emotion,
        "--method",
        "framing",
        "--source",
        tmp / "src.csv",
        "--out",
        tmp / "a.csv",
        "--batch-size",
        "1",
        *extra,
    ]


@pytest.mark.slow
def test_h4_killed_synthesis_resumes_only_with_its_own_settings(tmp_path, monkeypatch, capsys):
    """kill -9 during `data synthesize --emotion anger`, then the same with --emotion joy:
    refused (no mixed rows), the partial file intact; the anger rerun finishes it."""
    _source(tmp_path, n=30)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [IRM_BIN, *map(str, _synth(tmp_path, "anger"))], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    partial = tmp_path / "a.csv.partial.jsonl"
    import time

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.is_file() and partial.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the synthesis finished before it could be killed"
    proc.kill()
    proc.wait()
    assert partial.is_file() and not (tmp_path / "a.csv").exists()
    with open(partial, "ab") as fh:  # and a torn last line, as a crash mid-write leaves
        fh.write(b'{"index": 29, "row": {"quest')
    (tmp_path / ".a.csv.x1y2.tmp").write_bytes(b"half a table")  # a temporary file of a killed final write
    before = partial.read_bytes()
    code, out, err = run_main(_synth(tmp_path, "joy"), monkeypatch, capsys)
    text = flat(out + err)
    assert code == 2, out + err
    assert "interrupted synthesis with other settings" in text and "emotion='anger'" in text and "fix:" in text
    assert "traceback" not in text
    assert partial.read_bytes() == before and not (tmp_path / "a.csv").exists()

    code, out, err = run_main(_synth(tmp_path, "anger", "--limit", "12"), monkeypatch, capsys)  # other --limit: refused too
    assert code == 2 and "limit" in flat(out + err), out + err

    code, out, err = run_main(_synth(tmp_path, "anger", "--json"), monkeypatch, capsys)
    assert code == 0, out + err
    provenance = json.loads(out)
    assert provenance["config"]["emotion"] == "anger" and provenance["source_rows"] == 30
    import pandas as pd

    table = pd.read_csv(tmp_path / "a.csv")
    assert set(table.emotion) <= {"anger"} and len(table) == provenance["kept"] and table.question.is_unique
    assert not partial.exists() and not (tmp_path / "a.csv.partial.settings.json").exists()
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file of the killed run was left behind"


def test_h4_a_torn_last_line_is_cut_off_before_appending(tmp_path):
    from irm.data.synthesis import SynthesisConfig, partial_path, synthesize

    rows = [irm.data.rows.Row(line=i + 2, question=f"q{i}?", answer=f"answer {i} about wood") for i in range(6)]
    config = SynthesisConfig(emotion="anger", method="framing", candidates=2, batch_size=2)
    out = tmp_path / "a.jsonl"

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(config, out, rows=rows, progress=stop)
    partial = partial_path(out)
    lines = partial.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    partial.write_bytes(b"".join(lines[:3]) + lines[3][:10])  # the 4th line torn
    seen: list[int] = []

    def keep(done, total):
        seen.append(done)
        if done >= 4:  # stop again right after the first appended batch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(config, out, rows=rows, progress=keep)
    items = [json.loads(line) for line in partial.read_text().splitlines()]  # every line is whole JSON again
    assert [i["index"] for i in items] == [0, 1, 2, 3, 4]
    provenance = synthesize(config, out, rows=rows)
    assert provenance["source_rows"] == 6 and not partial.exists()


# ----------------------------------------------------------------------------- output paths


def _no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any generation is a failure: the output path must be refused before it."""
    import irm.analysis.recording as recording
    import irm.hosts.generation as generation

    def refuse(*args, **kwargs):
        raise AssertionError("generation started before --out was checked")

    monkeypatch.setattr(generation, "generate", refuse)
    monkeypatch.setattr(recording, "generate", refuse)


def _recording(tmp: Path) -> Path:
    from irm.analysis.recording import record, save_recording

    host = tiny_host()
    return save_recording(record(host, irm.IRM.for_host(host, "all", seed=0), ["hi", "a b c"], max_new_tokens=2), tmp / "rec")


def _link(tmp: Path, target: Path, name: str = "link") -> Path:
    target.mkdir(parents=True, exist_ok=True)
    (target / "keep.txt").write_text("mine")
    (tmp / name).symlink_to(target, target_is_directory=True)
    return tmp / name


def _foreign(tmp: Path) -> Path:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("mine")
    return tmp / "mine"


def _record(tmp: Path, m: pytest.MonkeyPatch, out: Path, *extra) -> list:
    _no_generation(m)
    return ["record", "--irm", make_irm_dir(tmp / "irm"), "--limit", "1", "--max-new-tokens", "2", "--out", out, *extra]


def _steer(out: Path, *extra) -> list:
    return ["steer", "fit", "--host", TINY, "--max-rows", "4", "--out", out, *extra]


def _import(tmp: Path, out: Path, *extra) -> list:
    return ["import-reference", _reference_checkpoint(tmp), "--host", TINY, "--out", out, *extra]


OUT_CASES = [
    Case("record-out-is-a-file", lambda t, m: _record(t, m, _file("f", "x")(t)), ["--out", "is a file, not a folder"]),
    Case(
        "record-out-is-a-link",
        lambda t, m: _record(t, m, _link(t, t / "elsewhere")),
        ["is a symbolic link", "never writes or deletes through links"],
    ),
    Case(
        "record-overwrite-foreign-folder",
        lambda t, m: _record(t, m, _foreign(t), "--overwrite"),
        ["holds files that are not a recording", "--overwrite replaces only"],
    ),
    Case("record-out-exists", lambda t, m: _record(t, m, _foreign(t)), ["already exists and is not empty", "--overwrite"]),
    Case(
        "record-overwrite-cwd",
        lambda t, m: (t / "x").write_text("x") and _record(t, m, Path("."), "--overwrite"),
        ["is the current folder", "never replaces it"],
    ),
    Case(
        "analyze-out-is-a-file",
        lambda t, m: ["analyze", _recording(t), "--no-host-outliers", "--out", _file("f.png", "x")(t)],
        ["--out", "is a file, not a folder"],
    ),
    Case(
        "analyze-out-is-a-link",
        lambda t, m: ["analyze", _recording(t), "--no-host-outliers", "--out", _link(t, t / "elsewhere")],
        ["is a symbolic link"],
    ),
    Case("steer-out-is-a-file", lambda t, m: _steer(_file("f", "x")(t)), ["--out", "is a file, not a folder"]),
    Case("steer-out-is-a-link", lambda t, m: _steer(_link(t, t / "elsewhere"), "--overwrite"), ["is a symbolic link"]),
    Case(
        "steer-overwrite-foreign-folder",
        lambda t, m: _steer(_foreign(t), "--overwrite"),
        ["holds files that are not an irm or steering-vector folder"],
    ),
    Case("import-out-is-a-link", lambda t, m: _import(t, _link(t, t / "elsewhere"), "--overwrite"), ["is a symbolic link"]),
    Case(
        "import-overwrite-foreign-folder",
        lambda t, m: _import(t, _foreign(t), "--overwrite"),
        ["holds files that are not an irm or steering-vector folder"],
    ),
    Case(
        "synthesize-out-is-a-link",
        lambda t, m: (t / "real.csv").write_text("question,answer\n")
        and (t / "l.csv").symlink_to(t / "real.csv")
        or ["data", "synthesize", "--emotion", "anger", "--method", "framing", "--out", t / "l.csv", "--overwrite"],
        ["l.csv is a symbolic link"],
    ),
    Case(
        "synthesize-out-under-a-file",
        lambda t, m: ["data", "synthesize", "--emotion", "anger", "--method", "framing", "--out", _file("f", "x")(t) / "a.csv"],
        ["is a file, not a folder"],
    ),
    Case(
        "record-out-under-a-file", lambda t, m: _record(t, m, _file("f", "x")(t) / "rec"), ["is a file, not a folder"], real_process=False
    ),
]


@pytest.mark.parametrize("case", OUT_CASES, ids=[c.id for c in OUT_CASES])
def test_output_paths_are_checked_up_front(case: Case, tmp_path, monkeypatch, capsys):
    test_bad_input_is_refused_cleanly(case, tmp_path, monkeypatch, capsys)
    for link in tmp_path.glob("link"):
        assert (link.resolve() / "keep.txt").read_text() == "mine"  # nothing deleted through the link


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody may write: a read-only tmpfs when running as root (root ignores
    permissions), else a folder without write permission."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root, and mount is not permitted here: cannot make a folder root may not write")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("command", ["record", "synthesize", "analyze", "steer", "import"])
def test_out_in_an_unwritable_folder_is_refused_up_front(command, read_only_folder, tmp_path, monkeypatch, capsys):
    target = read_only_folder / "new"
    args = {
        "record": lambda: _record(tmp_path, monkeypatch, target),
        "synthesize": lambda: ["data", "synthesize", "--emotion", "anger", "--method", "framing", "--out", read_only_folder / "a.csv"],
        "analyze": lambda: ["analyze", _recording(tmp_path), "--no-host-outliers", "--out", target],
        "steer": lambda: _steer(target),
        "import": lambda: _import(tmp_path, target),
    }[command]()
    code, out, err = run_main(args, monkeypatch, capsys)
    text = flat(out + err)
    assert code == 2 and "not writable" in text and "fix:" in text and "traceback" not in text, out + err
    assert list(read_only_folder.iterdir()) == []


# ----------------------------------------------------------------------------- a real full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system (tmpfs), so writes fail with the kernel's ENOSPC."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (mount -t tmpfs -o size=256k)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"mount is not permitted here: {proc.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill the disk until about ``leave`` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free > leave:
        (folder / "filler").write_bytes(b"\0" * (free - leave))


@pytest.mark.parametrize("command", ["record", "synthesize", "steer", "analyze"])
def test_a_real_full_disk_is_exit_2_and_keeps_the_old_files(command, small_disk, tmp_path, monkeypatch, capsys):
    """Each command writes once into the empty disk (to have old files), then again with
    the disk full: exit 2 "disk full", the old files unchanged, no temporary file left."""
    rec = _recording(tmp_path) if command == "analyze" else None
    _source(tmp_path, n=200)
    target = small_disk / ("a.jsonl" if command == "synthesize" else "out")
    args = {
        "record": [
            "record",
            "--irm",
            make_irm_dir(tmp_path / "irm"),
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            target,
            "--overwrite",
        ],
        "synthesize": [
            "data",
            "synthesize",
            "--emotion",
            "anger",
            "--method",
            "framing",
            "--candidates",
            "1",
            "--source",
            tmp_path / "src.csv",
            "--limit",
            "20",
            "--out",
            target,
            "--overwrite",
        ],
        "steer": _steer(target, "--overwrite"),
        "analyze": ["analyze", rec, "--no-host-outliers", "--frames", "2", "--token-plots", "1", "--out", target],
    }[command]
    code, out, err = run_main(args, monkeypatch, capsys)
    assert code == 0, out + err
    before = snapshot(small_disk)
    _fill(small_disk, leave=2048)
    with_filler = snapshot(small_disk)
    if command == "synthesize":  # more rows than fit in the space left
        args = [a if a != "20" else "200" for a in args]
    code, out, err = run_main(args, monkeypatch, capsys)
    text = flat(out + err)
    assert code == 2, out + err
    assert "disk full" in text and "fix:" in text and "traceback" not in text, out + err
    after = snapshot(small_disk)
    if command == "synthesize":  # finished batches stay in the partial file, for a resume
        after = {k: v for k, v in after.items() if ".partial" not in k}
    assert after == with_filler, "the old files changed, or a partial file was left"
    assert {k: v for k, v in after.items() if k != "filler"} == before


# ----------------------------------------------------------------------------- inputs


def _damage(tmp: Path, how: str) -> Path:
    rec = _recording(tmp)
    meta = json.loads((rec / "meta.json").read_text())
    if how == "meta-no-host":
        del meta["host"]
        (rec / "meta.json").write_text(json.dumps(meta))
    elif how == "meta-not-json":
        (rec / "meta.json").write_text("{not json")
    elif how == "tokens-broken":
        lines = (rec / "tokens.jsonl").read_text().splitlines()
        (rec / "tokens.jsonl").write_text("\n".join(lines[:2] + ['{"prompt": 0, "posit'] + lines[3:]) + "\n")
    elif how == "outputs-truncated":
        data = (rec / "outputs.safetensors").read_bytes()
        (rec / "outputs.safetensors").write_bytes(data[: len(data) - 100])
    elif how == "outputs-oversized":
        with open(rec / "outputs.safetensors", "ab") as fh:
            fh.write(b"\0" * 64)
    elif how == "outputs-garbage":
        (rec / "outputs.safetensors").write_bytes(b"\xff" * 12)
    return rec


DAMAGED = {
    "meta-no-host": ["meta.json", "does not name the host"],
    "meta-not-json": ["meta.json", "not valid json"],
    "tokens-broken": ["tokens.jsonl", "line 3", "not valid json"],
    "outputs-truncated": ["outputs.safetensors", "truncated"],
    "outputs-oversized": ["outputs.safetensors", "oversized"],
    "outputs-garbage": ["outputs.safetensors", "truncated"],
}

INPUT_CASES = [
    Case(
        "generate-negative-temperature",
        lambda t, m: ["generate", "--host", TINY, "-p", "hi", "--sample", "--temperature", "-1"],
        ["--temperature -1", "must be a number >= 0"],
        real_process=True,
    ),
    Case(
        "generate-nan-temperature",
        lambda t, m: ["generate", "--host", TINY, "-p", "hi", "--temperature", "nan"],
        ["--temperature nan", "must be a number >= 0"],
    ),
    Case(
        "generate-nan-top-p",
        lambda t, m: ["generate", "--host", TINY, "-p", "hi", "--sample", "--top-p", "nan"],
        ["--top-p nan", "above 0 and at most 1"],
    ),
    Case("generate-negative-top-p", lambda t, m: ["generate", "--host", TINY, "-p", "hi", "--sample", "--top-p", "-0.5"], ["--top-p -0.5"]),
    Case(
        "generate-lone-surrogate",
        lambda t, m: ["generate", "--host", TINY, "-p", "ok", "-p", "bad \udcff byte"],
        ["--prompt 2 is not valid text", "lone surrogate"],
    ),
    Case(
        "generate-lone-surrogate-process",
        lambda t, m: ["generate", "--host", TINY, "-p", os.fsdecode(b"caf\xe9")],
        ["--prompt 1 is not valid text"],
        real_process=True,
    ),
    Case(
        "generate-empty-prompt",
        lambda t, m: ["generate", "--host", TINY, "-p", "hi", "-p", "  "],
        ["--prompt 2 is empty (only whitespace)"],
    ),
    Case("score-lone-surrogate", lambda t, m: ["score", "fine", "bad \udcff"], ["text 2 is not valid text"]),
    Case("score-several-files", lambda t, m: ["score", GOOD(t), write_qa(t / "b.csv")], ["looks like a data file", "one file at a time"]),
    Case(
        "check-json-object-in-text",
        lambda t, m: [
            "data",
            "check",
            _file("o.jsonl", '{"question": "a?", "answer": "b"}\n{"question": {"en": "c?"}, "answer": "d"}\n')(t),
        ],
        ["o.jsonl", "line 2", "column 'question' holds a json object, not text"],
    ),
    Case(
        "train-list-in-text",
        lambda t, m: train_args(_file("l.jsonl", '{"text": ["a", "b"]}\n')(t), t / "run"),
        ["l.jsonl", "line 1", "column 'text' holds a list"],
        absent=["run"],
    ),
    Case(
        "check-lone-surrogate-escape",
        lambda t, m: ["data", "check", _file("s.jsonl", '{"text": "ok"}\n{"text": "bad \\ud800"}\n')(t)],
        ["s.jsonl", "line 2", "lone surrogate"],
    ),
    *[
        Case(
            f"analyze-{how}",
            lambda t, m, how=how: ["analyze", _damage(t, how), "--no-host-outliers", "--out", t / "an"],
            expect,
            absent=["an"],
        )
        for how, expect in DAMAGED.items()
    ],
]


@pytest.mark.parametrize("case", INPUT_CASES, ids=[c.id for c in INPUT_CASES])
def test_bad_inputs_are_refused(case: Case, tmp_path, monkeypatch, capsys):
    test_bad_input_is_refused_cleanly(case, tmp_path, monkeypatch, capsys)


def test_temperature_zero_means_greedy(monkeypatch, capsys):
    args = ["generate", "--host", TINY, "-p", "hello", "--max-new-tokens", "6", "--json"]
    code, greedy, err = run_main(args, monkeypatch, capsys)
    assert code == 0, err
    code, zero, err = run_main([*args, "--sample", "--temperature", "0", "--seed", "5"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(zero) == json.loads(greedy)


def test_the_prompts_set_is_listed_and_checked(monkeypatch, capsys):
    code, out, err = run_main(["data", "list", "--json"], monkeypatch, capsys)
    assert code == 0, err
    rows = {r["name"]: r["rows"] for r in json.loads(out)}
    assert rows["builtin:prompts"] >= 100
    code, out, err = run_main(["data", "check", "builtin:prompts", "--json"], monkeypatch, capsys)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["rows"] == rows["builtin:prompts"], out + err
    assert any("prompts only" in w for w in report["warnings"])
    code, out, err = run_main(["data", "check", "builtin:prompts", "--host", TINY, "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["token_lengths"]["max"] > 0, out + err
    code, out, err = run_main(["score", "builtin:prompts", "--json"], monkeypatch, capsys)
    assert code == 0 and len(json.loads(out)) == rows["builtin:prompts"], out + err


def test_leftovers_of_a_killed_run_are_cleaned_up_on_the_next_start(tmp_path, monkeypatch, capsys):
    """kill -9 leaves temporary files (and a half-built folder beside --out): the next
    record, analyze and steer fit start anyway, and leave none of them behind."""
    out = tmp_path / "rec"
    out.mkdir()
    (out / ".outputs.safetensors.k1ll.tmp").write_bytes(b"half")
    (out / ".meta.json.k1ll.tmp").write_bytes(b"{")
    (tmp_path / ".rec.new-k1ll").mkdir()
    (tmp_path / ".rec.new-k1ll" / "tokens.jsonl").write_text('{"prompt"')
    args = ["record", "--irm", make_irm_dir(tmp_path / "irm"), "--limit", "1", "--max-new-tokens", "2", "--out", out]
    code, stdout, err = run_main(args, monkeypatch, capsys)
    assert code == 0, stdout + err
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "outputs.safetensors", "prompts.jsonl", "tokens.jsonl"]
    assert not (tmp_path / ".rec.new-k1ll").exists()
    # an interrupted recording (no meta.json) is irm's own: --overwrite replaces it
    (out / "meta.json").unlink()
    code, stdout, err = run_main([*args, "--overwrite"], monkeypatch, capsys)
    assert code == 0 and (out / "meta.json").is_file(), stdout + err

    (tmp_path / "an").mkdir()
    (tmp_path / ".an.new-k1ll").mkdir()
    code, stdout, err = run_main(
        ["analyze", out, "--no-host-outliers", "--frames", "1", "--token-plots", "1", "--out", tmp_path / "an"], monkeypatch, capsys
    )
    assert code == 0 and (tmp_path / "an" / "summary.json").is_file(), stdout + err
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert all(Path(f).is_file() and Path(f).parent == tmp_path / "an" for f in summary["files"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    steer = tmp_path / "steer"
    steer.mkdir()
    (steer / ".model.safetensors.k1ll.tmp").write_bytes(b"half")
    code, stdout, err = run_main(_steer(steer), monkeypatch, capsys)
    assert code == 0, stdout + err
    assert sorted(p.name for p in steer.iterdir()) == ["irm_config.json", "model.safetensors"]
