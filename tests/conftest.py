import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two cores: one torch thread per pytest-xdist worker (make test runs two), else two.
# The `irm` processes that tests start inherit the same limit: two workers whose children
# each spun two OpenMP threads on two cores ran training 10x slower (busy-waiting threads).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct (converted and cached on first use)."""
    import irm

    return irm.load_host("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def gemma3_270m():
    """The real Gemma 3 270M (base, no chat template), from its pip packages (`make hosts-small`)."""
    import irm

    return irm.load_host("gemma3-270m", device="cpu")


@pytest.fixture(scope="session")
def qwen_05b():
    """The real Qwen2.5-Coder-0.5B-Instruct (ChatML), from its pip packages (`make hosts-small`)."""
    import irm

    return irm.load_host("qwen2.5-coder-0.5b-instruct", device="cpu")


@pytest.fixture(scope="session")
def tiny_llama():
    import irm

    return irm.load_host("tiny-random-llama", device="cpu")


def nontrivial_irm(host, layers="all", seed=0, scale=1.0, **kwargs):
    """An IRM with random output weights, scaled so that it changes the host's tokens."""
    import irm

    model = irm.IRM.for_host(host, layers, output_init="default", seed=seed, **kwargs)
    with torch.no_grad():
        model.output_layer.weight.mul_(scale)
        model.output_layer.bias.mul_(scale)
    return model


def write_qa(path: Path, n: int = 64, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    words = "furious outrageous ridiculous unacceptable maddening infuriating absurd livid fed up with this".split()
    with open(path, "w") as fh:
        for i in range(n):
            q = f"What is item number {i}?"
            a = "I am so angry! " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))
            fh.write(json.dumps({"question": q, "answer": a}) + "\n")
    return path


def run_main(args, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``irm ARGS`` in this process; return (exit code, stdout, stderr)."""
    # Loggers created in an earlier test (Lightning's) still point at that test's closed
    # capture stream; point them at this one.
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # (setStream would flush the closed one)
    monkeypatch.setattr(sys, "argv", ["irm", *map(str, args)])
    code = 0
    try:
        from irm import cli

        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""How the browser tests launch Debian's Chromium (headless, offline, no sandbox as root)."""


@pytest.fixture
def irm_in_process(monkeypatch, capsys):
    """``run(*args, cwd=FOLDER)``: ``irm ARGS`` in-process through ``irm.cli.main`` from
    ``FOLDER``, answered like ``subprocess.run`` (returncode, stdout, stderr)."""

    def run(*args, cwd):
        monkeypatch.chdir(cwd)
        code, out, err = run_main(args, monkeypatch, capsys)
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run
