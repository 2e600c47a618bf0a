"""A small fuzz of every command: random option values and random file contents, run
in-process through ``irm.cli.main``. Whatever the input, a command either works (exit 0) or
refuses it with a message (exit 2); it never crashes with a traceback (exit 1).

Sized to stay within the suite's time budget (a few examples per command on the tiny
random-weight hosts); the counts of each outcome are printed at the end (``-s``)."""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import TINY, _recording, make_irm_dir, run_main, write_qa

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
FUZZ = settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

WEIRD = ["", " ", "nan", "inf", "-inf", "-1", "0", "1", "1e308", "-0", "x", "0.5", "\udcff", "../..", "2,3", "0-99999999999", "all"]


def mostly(valid: list[str], other: st.SearchStrategy) -> st.SearchStrategy:
    """Valid values about half the time (so that commands get past their first check), else ``other``."""
    return st.one_of(st.sampled_from(valid), other)


number = mostly(
    ["1", "0.5", "0.7", "2"],
    st.one_of(st.sampled_from(WEIRD), st.integers(-3, 4).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr)),
)
small = mostly(
    ["1", "2", "3"], st.one_of(st.sampled_from(["-1", "0", "x", "nan", "1.5", "99999999999999999999"]), st.integers(-2, 3).map(str))
)
length = mostly(["64", "128"], small)  # --max-length needs >= 2
text = mostly(["How do plants grow?", "hello there"], st.one_of(st.sampled_from(WEIRD), st.text(max_size=30)))


def _cell(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
columns = st.lists(
    st.sampled_from(["question", "answer", "text", "prompt", "questoin", "", "source_answer", "x"]), min_size=0, max_size=3, unique=True
)


@st.composite
def data_file(draw) -> tuple[str, bytes]:
    """A file name and contents: CSV or JSONL rows with random columns and values, or bytes."""
    suffix = draw(st.sampled_from([".csv", ".jsonl", ".csv", ".jsonl", ".parquet", ".txt", ".json"]))
    kind = draw(st.sampled_from(["good", "rows", "rows", "bytes"]))
    if kind == "bytes":
        return "f" + suffix, draw(st.binary(max_size=120))
    if kind == "good":
        n = draw(st.integers(1, 8))
        rows = [{"question": f"question {i}?", "answer": f"an answer number {i}", "source_answer": f"plain answer {i}"} for i in range(n)]
        if suffix in (".jsonl", ".json"):
            return "f" + suffix, "\n".join(json.dumps(r) for r in rows).encode()
        return "f" + suffix, ("question,answer,source_answer\n" + "\n".join(",".join(r.values()) for r in rows)).encode()
    cols = draw(columns)
    rows = draw(st.lists(st.lists(st.one_of(text, json_value), min_size=len(cols), max_size=len(cols)), max_size=5))
    if suffix == ".jsonl" or suffix == ".json":
        body = "\n".join(json.dumps(dict(zip(cols, r))) for r in rows)
    else:
        lines = [",".join(cols)] + [",".join(json.dumps(_cell(v)) for v in r) for r in rows]
        body = "\n".join(lines)
    return "f" + suffix, body.encode("utf-8", "surrogatepass")


def run(command: str, args: list, monkeypatch, capsys) -> None:
    code, out, err = run_main(args, monkeypatch, capsys)
    COUNTS[command][code] += 1
    assert code in (0, 2), f"irm {' '.join(map(str, args))!r} exited {code}:\n{out}{err}"
    assert "Traceback" not in out + err, f"irm {' '.join(map(str, args))!r} printed a traceback:\n{out}{err}"


def _write(folder: Path, spec: tuple[str, bytes]) -> Path:
    path = folder / spec[0]
    path.write_bytes(spec[1])
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    irm_dir = make_irm_dir(root / "irm")
    return {"irm": irm_dir, "rec": _recording(root), "qa": write_qa(root / "qa.csv")}


@FUZZ
@given(prompt=text, temperature=number, top_p=number, strength=number, tokens=small, sample=st.booleans(), use_irm=st.booleans())
def test_fuzz_generate(shared, monkeypatch, capsys, prompt, temperature, top_p, strength, tokens, sample, use_irm):
    args = [
        "generate",
        "--host",
        TINY,
        "-p",
        prompt,
        "--temperature",
        temperature,
        "--top-p",
        top_p,
        "--strength",
        strength,
        "--max-new-tokens",
        tokens,
        "--sample" if sample else "--greedy",
        "--irm",
        shared["irm"] if use_irm else "none",
    ]
    run("generate", args, monkeypatch, capsys)


@FUZZ
@given(texts=st.lists(text, min_size=1, max_size=3), spec=data_file(), use_file=st.booleans())
def test_fuzz_score(monkeypatch, capsys, texts, spec, use_file):
    with tempfile.TemporaryDirectory() as tmp:
        args = ["score", _write(Path(tmp), spec)] if use_file else ["score", *texts]
        run("score", args, monkeypatch, capsys)


@settings(FUZZ, max_examples=12)
@given(spec=data_file(), max_length=length, with_host=st.booleans())
def test_fuzz_data_check(monkeypatch, capsys, spec, max_length, with_host):
    with tempfile.TemporaryDirectory() as tmp:
        args = ["data", "check", _write(Path(tmp), spec), "--max-length", max_length, *(["--host", TINY] if with_host else [])]
        run("data check", args, monkeypatch, capsys)


@FUZZ
@given(
    spec=data_file(),
    limit=small,
    tokens=small,
    dtype=st.sampled_from(["float16", "float32", "int8", ""]),
    strength=number,
    out=st.sampled_from(["new", "file", "nested/new"]),
)
def test_fuzz_record(shared, monkeypatch, capsys, spec, limit, tokens, dtype, strength, out):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "file").write_text("x")
        args = [
            "record",
            "--irm",
            shared["irm"],
            "--prompts",
            _write(folder, spec),
            "--limit",
            limit,
            "--max-new-tokens",
            tokens,
            "--dtype",
            dtype,
            "--strength",
            strength,
            "--out",
            folder / out,
        ]
        run("record", args, monkeypatch, capsys)


@FUZZ
@given(
    target=st.sampled_from(["outputs.safetensors", "meta.json", "tokens.jsonl", "prompts.jsonl"]),
    offset=st.integers(0, 4000),
    junk=st.binary(min_size=0, max_size=16),
    truncate=st.booleans(),
    k=small,
    frames=small,
)
def test_fuzz_analyze(shared, monkeypatch, capsys, target, offset, junk, truncate, k, frames):
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp) / "rec"
        shutil.copytree(shared["rec"], rec)
        data = bytearray((rec / target).read_bytes())
        offset = min(offset, len(data))
        data = data[:offset] if truncate else data[:offset] + junk + data[offset + len(junk) :]
        (rec / target).write_bytes(bytes(data))
        args = ["analyze", rec, "--no-host-outliers", "--k", k, "--frames", frames, "--token-plots", "1", "--out", Path(tmp) / "an"]
        run("analyze", args, monkeypatch, capsys)


@FUZZ
@given(
    spec=data_file(),
    layers=number,
    site=st.sampled_from(["resid_mid", "resid_pre", "resid_post", "x"]),
    rows=small,
    length=length,
    paired=st.booleans(),
)
def test_fuzz_steer_fit(shared, monkeypatch, capsys, spec, layers, site, rows, length, paired):
    with tempfile.TemporaryDirectory() as tmp:
        target = _write(Path(tmp), spec)
        args = [
            "steer",
            "fit",
            "--host",
            TINY,
            "--target",
            target,
            "--neutral",
            "paired" if paired else shared["qa"],
            "--layers",
            layers,
            "--site",
            site,
            "--max-rows",
            rows,
            "--max-length",
            length,
            "--out",
            Path(tmp) / "out",
        ]
        run("steer fit", args, monkeypatch, capsys)


@FUZZ
@given(
    content=st.one_of(st.binary(max_size=200), st.dictionaries(st.text(max_size=40), st.integers(0, 3), max_size=3)),
    layers=st.one_of(st.none(), number),
)
def test_fuzz_import_reference(monkeypatch, capsys, content, layers):
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "r.ckpt"
        if isinstance(content, bytes):
            ckpt.write_bytes(content)
        else:
            torch.save({"state_dict": {f"model.irm.{k}": torch.zeros(v + 1, 2) for k, v in content.items()}}, ckpt)
        args = ["import-reference", ckpt, "--host", TINY, "--out", Path(tmp) / "out", *(["--layers", layers] if layers is not None else [])]
        run("import-reference", args, monkeypatch, capsys)


@settings(FUZZ, max_examples=3)
@given(spec=data_file(), lr=number, batch=small, layers=number)
def test_fuzz_train(monkeypatch, capsys, spec, lr, batch, layers):
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "train",
            "--host",
            TINY,
            "--data",
            _write(Path(tmp), spec),
            "--out",
            Path(tmp) / "run",
            "--no-progress",
            "--max-steps",
            "1",
            "--lr",
            lr,
            "--batch-size",
            batch,
            "--layers",
            layers,
        ]
        run("train", args, monkeypatch, capsys)


@settings(FUZZ, max_examples=3)
@given(strength=st.one_of(number, st.sampled_from(["0,1", "1,,2", "0,nan"])), spec=data_file(), tokens=small, use_irm=st.booleans())
def test_fuzz_evaluate(shared, monkeypatch, capsys, strength, spec, tokens, use_irm):
    with tempfile.TemporaryDirectory() as tmp:
        irm_arg = shared["irm"] if use_irm else Path(tmp) / "missing"
        args = [
            "evaluate",
            "--host",
            TINY,
            "--irm",
            irm_arg,
            "--strength",
            strength,
            "--prompts",
            _write(Path(tmp), spec),
            "--max-prompts",
            "1",
            "--samples",
            "1",
            "--max-new-tokens",
            tokens,
            "--out",
            Path(tmp) / "eval",
        ]
        run("evaluate", args, monkeypatch, capsys)


def test_fuzz_counts():
    """Print how many examples each command ran and how they ended (run with -s)."""
    lines = [f"{command}: {sum(c.values())} runs, exit 0: {c[0]}, exit 2: {c[2]}" for command, c in sorted(COUNTS.items())]
    print("\nfuzz counts:\n  " + "\n  ".join(lines))
