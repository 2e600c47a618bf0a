"""`benchmarks/run.py --quick`: the one benchmark command runs on a CPU in seconds and writes
its JSON and markdown, with every part, including the large-host part on a tiny shape."""

import json
import subprocess
import sys
from pathlib import Path

from transformers import LlamaConfig

import irm
from irm.core.flops import training_flops
from irm.hosts.tiny import build_tiny, byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_json_and_markdown(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["quick"] is True and results["meta"]["device"] in ("cpu", "cuda")
    gen = results["generation"]
    assert set(gen["ratio_vs_bare"]) == {"bare", "irm_off", "irm_on", "irm_on_recording"}
    assert gen["ratio_vs_bare"]["bare"] == 1.0 and all(v > 0 for v in gen["tokens_per_second"].values())
    assert results["training_tiny"]["real_tokens_per_second"] > 0

    large = results["large"]
    assert large["shape"] == "tiny" and set(large["training"]) == {"paper", "lowrank_r8"}
    config = LlamaConfig(**large["host_config"])
    model = build_tiny("bench", config=config)
    host = irm.Host(model=model, tokenizer=byte_tokenizer(), name="t", spec=irm.resolve_architecture(model))
    for name, rank in (("paper", None), ("lowrank_r8", 8)):
        part = large["training"][name]
        net = irm.IRM.for_host(host, "all", rank=rank)
        assert part["irm_parameters"] == sum(p.numel() for p in net.parameters())
        for run in part["runs"]:
            # the FLOPs behind MFU are the hand-checked count of irm.core.flops, at the causal mean context
            assert run["flops_per_token"] == training_flops(config, net.config, context=(run["seq"] + 1) // 2)
            assert (
                abs(run["achieved_tflops"] * 1e12 - run["tokens_per_second"] * run["flops_per_token"])
                < 1e-3 * run["achieved_tflops"] * 1e12
            )
    assert set(large["generation"]) == {"1", "2"}
    for part in large["generation"].values():
        assert set(part["tokens_per_second"]) == {"bare", "irm_off", "paper_on", "lowrank_r8_on"}
    md = (tmp_path / "results.md").read_text()
    assert "## Generation" in md and "tiny-shaped Llama host" in md
