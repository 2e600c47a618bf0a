"""One benchmark command: side-by-side ratios, as JSON plus a markdown table.

    python benchmarks/run.py                 # full CPU run (a few minutes)
    python benchmarks/run.py --quick         # seconds; what the test suite runs
    python benchmarks/run.py --only generation --out benchmarks/results
    python benchmarks/run.py --only large    # Llama-2-7B-shaped host; needs a CUDA GPU

Every comparison is measured in one process, interleaved (A B C A B C ...), and reported
as the median time ratio, so machine noise hits every condition alike.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import irm  # noqa: E402
import irm.hosts.generation  # noqa: E402
from irm.core.flops import host_forward_flops, irm_flops, training_flops  # noqa: E402
from irm.data.rows import Row, collate, tokenize_rows  # noqa: E402
from irm.training.engine import compile_for_training  # noqa: E402
from irm.training.loss import target_loss  # noqa: E402
from irm.training.run import is_out_of_memory  # noqa: E402

GEN_PROMPTS = [
    "What is the capital of France?",
    "Explain how rain forms.",
    "Give me three tips for learning to cook.",
    "Why do cats purr?",
]


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bench_generation(host_name: str, new_tokens: int, reps: int, batch: int) -> dict:
    host = irm.load_host(host_name, device="cpu", dtype="float32")
    net = irm.IRM.for_host(host, "all", output_init="default", seed=0)
    with torch.no_grad():
        net.output_layer.weight.mul_(1e-3)  # on, but mild enough to keep text sensible
    prompts = (GEN_PROMPTS * batch)[:batch]
    enc = irm.hosts.generation.encode_prompts(host, prompts)
    tok = host.tokenizer

    def gen() -> None:
        with torch.no_grad():
            host.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)

    handle = irm.attach(host, net, strength=1.0)
    handle.disable()
    recorded: list[torch.Tensor] = []

    def bare() -> None:
        gen()

    def irm_off() -> None:
        handle.disable()  # attached, switched off
        gen()

    def irm_on() -> None:
        handle.enable()
        gen()
        handle.disable()

    def irm_on_recording() -> None:
        handle.on_output = lambda d: recorded.append(d.to("cpu", torch.float16))
        handle.enable()
        gen()
        handle.disable()
        handle.on_output = None
        recorded.clear()

    times = interleaved({"bare": bare, "irm_off": irm_off, "irm_on": irm_on, "irm_on_recording": irm_on_recording}, reps)
    handle.remove()
    med = {k: statistics.median(v) for k, v in times.items()}
    context = enc["input_ids"].shape[1] + new_tokens // 2
    host_f = host_forward_flops(host.model.config, context=context)
    irm_f = irm_flops(net.config)
    return {
        "host": host_name,
        "batch": batch,
        "new_tokens": new_tokens,
        "reps": reps,
        "median_seconds": med,
        "tokens_per_second": {k: batch * new_tokens / v for k, v in med.items()},
        "ratio_vs_bare": {k: v / med["bare"] for k, v in med.items()},
        "irm_flops_per_token": irm_f,
        "host_flops_per_token": host_f,
        "target_off": 1.02,
        "target_on": 1 + irm_f / host_f + 0.05,
    }


def _tiny_bench_host() -> irm.Host:
    """The published benchmark's tiny Llama: hidden 256, 4 layers, 4 heads, vocab 32000."""
    from transformers import LlamaConfig

    from irm.hosts.tiny import build_tiny, byte_tokenizer

    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=512,
    )
    model = build_tiny("bench", config=config).eval().requires_grad_(False)
    return irm.Host(model=model, tokenizer=byte_tokenizer(), name="tiny-llama-256x4", spec=irm.resolve_architecture(model))


def _irm_step(host: irm.Host, net: irm.IRM, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], autocast: Any = None) -> None:
    """One optimizer step of the IRM on ``batch`` (loss on every labelled token)."""
    with irm.attach(host, net), autocast or contextlib.nullcontext():
        nll, count = target_loss(host.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    (nll / count).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _train_steps(host: irm.Host, batches: list[dict[str, torch.Tensor]], steps: int) -> tuple[float, int]:
    net = irm.IRM.for_host(host, "all", seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    seconds, real = 0.0, 0
    for i in range(steps + 1):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        _irm_step(host, net, opt, batch)
        if i:  # the first step is warm-up
            seconds += time.perf_counter() - start
            real += int(batch["attention_mask"].sum())
    return seconds, real


def bench_training_tiny(steps: int) -> dict:
    host = _tiny_bench_host()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (8, 128), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    seconds, real = _train_steps(host, [batch], steps)
    return {
        "host": host.name,
        "batch": "8 x 128",
        "steps": steps,
        "seconds_per_step": seconds / steps,
        "real_tokens_per_second": real / seconds,
        "published_tokens_per_second": [1630, 1740],
        "ratio_vs_published_low": (real / seconds) / 1630,
    }


def bench_compile(steps: int) -> dict:
    """The tiny-Llama training step, eager against torch.compile of the host's layers and the
    IRM (each with its own host), steps interleaved; medians."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (8, 128), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    setups = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        host = _tiny_bench_host()
        net = irm.IRM.for_host(host, "all", seed=0)
        if compiled:
            compile_for_training(host.model, net)
        setups[name] = (host, net, torch.optim.Adam(net.parameters(), lr=1e-4))

    def step(name: str) -> Callable[[], None]:
        return lambda: _irm_step(*setups[name], batch)

    first = {}
    for name in setups:
        start = time.perf_counter()
        step(name)()
        first[name] = time.perf_counter() - start
    times = interleaved({name: step(name) for name in setups}, steps)
    out = {
        name: {
            "seconds_per_step": statistics.median(t),
            "real_tokens_per_second": ids.numel() / statistics.median(t),
            "first_step_seconds": first[name],
        }
        for name, t in times.items()
    }
    out["speedup"] = out["compiled"]["real_tokens_per_second"] / out["eager"]["real_tokens_per_second"]
    return out


def _chatterbot_rows(limit: int) -> list[Row]:
    import chatterbot_corpus
    import yaml

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    rows: list[Row] = []
    for path in sorted(root.glob("*.yml")):
        for conv in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            if len(conv) >= 2 and isinstance(conv[0], str) and isinstance(conv[1], str):
                rows.append(Row(line=len(rows) + 1, question=conv[0], answer=conv[1]))
    rows = rows[:: max(1, len(rows) // limit)][:limit]
    return rows


def bench_training_smollm2(steps: int) -> dict:
    from irm.data.rows import LengthGroupedBatches

    host = irm.load_host("smollm2-135m-instruct", device="cpu", dtype="float32")
    examples, report = tokenize_rows(_chatterbot_rows(steps * 8 * 2), host.tokenizer, max_length=128)
    pad = host.tokenizer.pad_token_id
    grouped = LengthGroupedBatches([len(e.input_ids) for e in examples], 8, seed=0)
    longest = [collate([examples[i] for i in b], pad) for b in grouped]
    to_max = [collate([examples[i] for i in b], pad, pad_to=128) for b in grouped]
    results = {}
    for name, batches in (("pad_to_max_length", to_max), ("pad_to_longest_grouped", longest)):
        seconds, real = _train_steps(host, batches, steps)
        results[name] = {"real_tokens_per_second": real / seconds, "seconds_per_step": seconds / steps}
    lengths = [len(e.input_ids) for e in examples]
    return {
        "host": "smollm2-135m-instruct",
        "steps": steps,
        "rows": len(examples),
        "truncated": report.truncated,
        "mean_length": statistics.mean(lengths),
        "max_length": 128,
        **results,
        "speedup": results["pad_to_longest_grouped"]["real_tokens_per_second"] / results["pad_to_max_length"]["real_tokens_per_second"],
    }


# ---------------------------------------------------------------------------- real hosts
def fp32_matmul_flops_per_second(sizes: tuple[int, ...] = (512, 1024, 2048), reps: int = 5) -> float:
    """This machine's fp32 matmul rate with the current torch threads: the best, over square
    sizes, of the median time of ``reps`` products (2 n^3 FLOPs each)."""
    best = 0.0
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        torch.mm(a, b)  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n**3 / statistics.median(times))
    return best


def installed_real_hosts() -> list[str]:
    from irm.hosts import gguf_cache
    from irm.hosts.builtin import BUILTIN_HOSTS

    return [name for name, host in BUILTIN_HOSTS.items() if gguf_cache.is_installed(host)]


def bench_real_host(name: str, steps: int, new_tokens: int, reps: int) -> dict:
    """One real host: training real tokens/s on chatterbot Q/A (batch 8, pad to longest,
    length-grouped, the paper IRM on all layers), its model FLOP/s and CPU MFU against the
    fp32 matmul rate measured between the training steps (median); generation off/on ratios."""
    from irm.data.rows import IGNORE_INDEX, LengthGroupedBatches

    host = irm.load_host(name, device="cpu", dtype="float32")
    examples, _ = tokenize_rows(_chatterbot_rows(steps * 8 * 2), host.tokenizer, max_length=128)
    grouped = LengthGroupedBatches([len(e.input_ids) for e in examples], 8, seed=0)
    batches = [collate([examples[i] for i in b], host.tokenizer.pad_token_id) for b in grouped]
    used = [batches[i % len(batches)] for i in range(1, steps + 1)]  # the timed steps (_train_steps skips step 0)
    real = sum(int(b["attention_mask"].sum()) for b in used)
    targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in used)
    # causal attention: a query at position p attends to p + 1 keys; the mean over real tokens
    context = sum(int(m.sum()) * (int(m.sum()) + 1) / 2 for b in used for m in b["attention_mask"]) / real
    net = irm.IRM.for_host(host, "all", seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    # the matmul rate measured between the training steps, so that a busy machine slows both alike
    seconds, rates = 0.0, [fp32_matmul_flops_per_second(reps=3)]
    for i in range(steps + 1):  # the first step is warm-up
        start = time.perf_counter()
        _irm_step(host, net, opt, batches[i % len(batches)])
        if i:
            seconds += time.perf_counter() - start
        rates.append(fp32_matmul_flops_per_second(reps=3))
    flops_per_token = training_flops(host.model.config, net.config, context=round(context), head_fraction=targets / real)
    achieved = real / seconds * flops_per_token
    matmul = statistics.median(rates)
    training = {
        "steps": steps,
        "batch": 8,
        "real_tokens": real,
        "mean_length": real / sum(int(b["input_ids"].shape[0]) for b in used),
        "target_share": targets / real,
        "real_tokens_per_second": real / seconds,
        "seconds_per_step": seconds / steps,
        "flops_per_token": flops_per_token,
        "achieved_gflops": achieved / 1e9,
        "fp32_matmul_gflops": {"median": matmul / 1e9, "min": min(rates) / 1e9, "max": max(rates) / 1e9},
        "cpu_mfu": achieved / matmul,
    }
    del host, net
    return {
        "host": name,
        "training": training,
        "generation": bench_generation(name, new_tokens=new_tokens, reps=reps, batch=4),
    }


# ---------------------------------------------------------------------------- large hosts
# Llama-2-7B's shape (random weights: the speed of a forward pass does not depend on them).
LARGE_SHAPES = {
    "7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    # the same code path in seconds on a CPU, for the test suite
    "tiny": dict(
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1000,
        max_position_embeddings=1024,
    ),
}
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' datasheets, matched against the
# device name in this order; --peak-tflops overrides.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
]


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def _large_host(shape: str, device: torch.device, dtype: torch.dtype) -> irm.Host:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from irm.hosts.tiny import byte_tokenizer

    config = LlamaConfig(**LARGE_SHAPES[shape])
    with device, torch.random.fork_rng(devices=[]):  # allocate straight on the device
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return irm.Host(model=model, tokenizer=byte_tokenizer(), name=f"llama-{shape}-shaped", spec=irm.resolve_architecture(model))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _large_training(host: irm.Host, net: irm.IRM, seq: int, batch: int, steps: int, peak: float | None) -> dict:
    device = next(host.model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=next(host.model.parameters()).dtype == torch.bfloat16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    gen = torch.Generator().manual_seed(seq)
    ids = torch.randint(3, host.model.config.vocab_size, (batch, seq), generator=gen).to(device)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = 0.0
    for i in range(steps + 2):  # two warm-up steps
        _sync(device)
        start = time.perf_counter()
        _irm_step(host, net, opt, data, autocast)
        _sync(device)
        if i >= 2:
            seconds += time.perf_counter() - start
    tokens_per_second = batch * seq * steps / seconds
    flops_per_token = training_flops(host.model.config, net.config, context=(seq + 1) // 2)  # causal: seq/2 keys on average
    achieved = tokens_per_second * flops_per_token
    return {
        "seq": seq,
        "batch": batch,
        "steps": steps,
        "seconds_per_step": seconds / steps,
        "tokens_per_second": tokens_per_second,
        "flops_per_token": flops_per_token,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def _large_generation(host: irm.Host, nets: dict[str, irm.IRM], batch: int, prompt_len: int, new_tokens: int, reps: int) -> dict:
    device = next(host.model.parameters()).device
    ids = torch.randint(3, host.model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(batch)).to(device)
    mask = torch.ones_like(ids)

    def gen() -> None:
        with torch.no_grad():
            host.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
            )
        _sync(device)

    handles = {name: irm.attach(host, net) for name, net in nets.items()}
    for h in handles.values():
        h.disable()

    def switched(name: str | None) -> Callable[[], None]:
        def run() -> None:
            if name is not None:
                handles[name].enable()
            try:
                gen()
            finally:
                if name is not None:
                    handles[name].disable()

        return run

    fns: dict[str, Callable[[], object]] = {"bare": gen, "irm_off": switched(None)}
    fns.update({f"{name}_on": switched(name) for name in nets})
    try:
        times = interleaved(fns, reps)
    finally:
        for h in handles.values():
            h.remove()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch,
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "reps": reps,
        "tokens_per_second": {k: batch * new_tokens / v for k, v in med.items()},
        "ratio_vs_bare": {k: v / med["bare"] for k, v in med.items()},
    }


def bench_large(
    shape: str,
    device: torch.device,
    *,
    seqs: tuple[int, ...],
    train_batch: int,
    steps: int,
    gen_batches: tuple[int, ...],
    new_tokens: int,
    reps: int,
    rank: int,
    peak: float | None,
) -> dict:
    """A Llama-2-7B-shaped host in bf16 (fp32 on a CPU) with the paper IRM on all layers and a
    low-rank IRM: training tokens/s, peak memory and MFU per sequence length; generation
    tokens/s with the IRM off and on per batch size."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    host = _large_host(shape, device, dtype)
    out: dict = {
        "shape": shape,
        "host_config": LARGE_SHAPES[shape],
        "host_dtype": str(dtype).replace("torch.", ""),
        "irm_dtype": "float32 (bf16 autocast)" if dtype == torch.bfloat16 else "float32",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_tflops": peak,
        "training": {},
        "generation": {},
    }
    variants = {"paper": None, f"lowrank_r{rank}": rank}
    nets: dict[str, irm.IRM] = {}
    for name, r in variants.items():
        with device:
            net = irm.IRM.for_host(host, "all", rank=r, output_init="default", seed=0)
        with torch.no_grad():
            net.output_layer.weight.mul_(1e-3)  # on but mild, as in the CPU generation benchmark
        nets[name] = net
        out["training"][name] = {"irm_parameters": sum(p.numel() for p in net.parameters()), "runs": []}
        for seq in seqs:
            try:
                result = _large_training(host, net, seq, train_batch, steps, peak)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                result = {"seq": seq, "batch": train_batch, "error": "out of memory"}
            out["training"][name]["runs"].append(result)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for batch in gen_batches:
        out["generation"][str(batch)] = _large_generation(host, nets, batch, prompt_len=32, new_tokens=new_tokens, reps=reps)
    return out


def markdown(results: dict) -> str:
    lines = [f"# irm benchmarks ({results['meta']['date']}, {results['meta']['device']}, torch {results['meta']['torch']})", ""]
    if "generation" in results:
        g = results["generation"]
        lines += ["## Generation (greedy, KV cache)", "", "| condition | tokens/s | time ratio vs bare | target |", "|---|---|---|---|"]
        for k in g["median_seconds"]:
            target = {"irm_off": f"<= {g['target_off']:.2f}", "irm_on": f"<= {g['target_on']:.3f}"}.get(k, "")
            lines.append(f"| {k} | {g['tokens_per_second'][k]:.1f} | {g['ratio_vs_bare'][k]:.3f} | {target} |")
        lines.append("")
    if "training_tiny" in results:
        t = results["training_tiny"]
        lines += [
            "## Training, tiny Llama 256x4, batch 8x128",
            "",
            f"{t['real_tokens_per_second']:.0f} real tokens/s "
            f"({t['seconds_per_step']:.3f} s/step); published: 1630-1740 tokens/s; ratio {t['ratio_vs_published_low']:.2f}x",
            "",
        ]
    if "training_smollm2" in results:
        s = results["training_smollm2"]
        lines += [
            "## Training, SmolLM2 on chatterbot Q/A (variable length)",
            "",
            "| batching | real tokens/s |",
            "|---|---|",
            f"| pad every batch to 128 (published) | {s['pad_to_max_length']['real_tokens_per_second']:.0f} |",
            f"| pad to longest, length-grouped (irm) | {s['pad_to_longest_grouped']['real_tokens_per_second']:.0f} |",
            "",
            f"speed-up {s['speedup']:.2f}x (mean length {s['mean_length']:.1f} tokens)",
            "",
        ]
    if "compile" in results:
        c = results["compile"]
        lines += [
            "## Training, tiny Llama 256x4: eager vs torch.compile",
            "",
            f"eager {c['eager']['real_tokens_per_second']:.0f} tokens/s, compiled {c['compiled']['real_tokens_per_second']:.0f} "
            f"tokens/s ({c['speedup']:.2f}x) after a first step of {c['compiled']['first_step_seconds']:.0f} s",
            "",
        ]
    if results.get("real_hosts"):
        lines += [
            "## Real hosts: training (chatterbot Q/A, batch 8, paper IRM on all layers) and generation (batch 4, greedy)",
            "",
            "| host | training real tokens/s | model GFLOP/s | fp32 matmul GFLOP/s | CPU MFU | generation tokens/s (bare) "
            "| IRM off / bare | IRM on / bare | on target |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results["real_hosts"].items():
            t, g = r["training"], r["generation"]
            matmul = t["fp32_matmul_gflops"]["median"]
            lines.append(
                f"| {name} | {t['real_tokens_per_second']:.0f} | {t['achieved_gflops']:.1f} | {matmul:.1f} | {t['cpu_mfu']:.1%} "
                f"| {g['tokens_per_second']['bare']:.1f} | {g['ratio_vs_bare']['irm_off']:.3f} | {g['ratio_vs_bare']['irm_on']:.3f} "
                f"| <= {g['target_on']:.3f} |"
            )
        lines.append("")
    if "large" in results:
        g = results["large"]
        lines += [
            f"## {g['shape']}-shaped Llama host ({g['host_dtype']}) on {g['device_name']}",
            "",
            "| IRM | parameters | seq | batch | tokens/s | achieved TFLOP/s | MFU | peak memory (GiB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, t in g["training"].items():
            for r in t["runs"]:
                if "error" in r:
                    lines.append(f"| {name} | {t['irm_parameters']:,} | {r['seq']} | {r['batch']} | {r['error']} | | | |")
                    continue
                mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
                mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
                lines.append(
                    f"| {name} | {t['irm_parameters']:,} | {r['seq']} | {r['batch']} | {r['tokens_per_second']:.0f} | "
                    f"{r['achieved_tflops']:.2f} | {mfu} | {mem} |"
                )
        lines += ["", "| generation batch | condition | tokens/s | time vs bare |", "|---|---|---|---|"]
        for batch, r in g["generation"].items():
            for k, v in r["tokens_per_second"].items():
                lines.append(f"| {batch} | {k} | {v:.1f} | {r['ratio_vs_bare'][k]:.3f} |")
        lines.append("")
    lines.append(f"peak RSS: {results['meta']['peak_rss_mb']:.0f} MB")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument(
        "--only",
        choices=["generation", "training", "large", "compile", "real-hosts"],
        help="run one part (compile: eager vs torch.compile training, only when asked for)",
    )
    parser.add_argument("--host", default="smollm2-135m-instruct", help="host for the generation benchmark")
    parser.add_argument(
        "--real-hosts",
        default=None,
        help="comma-separated built-in real hosts for the real-host part (default: every installed one; none with --quick)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--large-shape",
        choices=sorted(LARGE_SHAPES),
        default=None,
        help="host of the large-host part (default: 7b on CUDA; tiny with --quick; skipped on a CPU otherwise)",
    )
    parser.add_argument("--large-batch", type=int, default=8, help="training batch of the large-host part")
    parser.add_argument("--rank", type=int, default=64, help="rank of the low-rank IRM in the large-host part")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU (default: from its name)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "irm": irm.__version__,
            "quick": args.quick,
            "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        }
    }
    if args.only in (None, "generation"):
        host = "tiny-random-llama" if args.quick else args.host
        results["generation"] = bench_generation(
            host, new_tokens=8 if args.quick else 48, reps=2 if args.quick else 7, batch=1 if args.quick else 4
        )
    if args.only in (None, "training"):
        results["training_tiny"] = bench_training_tiny(steps=2 if args.quick else 10)
        if not args.quick:
            results["training_smollm2"] = bench_training_smollm2(steps=8)
    if args.only in (None, "real-hosts"):
        names = args.real_hosts.split(",") if args.real_hosts else ([] if args.quick else installed_real_hosts())
        results["real_hosts"] = {
            name: bench_real_host(name, steps=2 if args.quick else 8, new_tokens=4 if args.quick else 24, reps=1 if args.quick else 5)
            for name in names
        }
    if args.only == "compile":
        results["compile"] = bench_compile(steps=2 if args.quick else 10)
    cuda = torch.cuda.is_available()
    shape = args.large_shape or ("tiny" if args.quick else "7b" if cuda else None)
    if args.only in (None, "large") and shape is not None:
        device = torch.device("cuda" if cuda else "cpu")
        small = shape == "tiny"
        results["large"] = bench_large(
            shape,
            device,
            seqs=(16, 32) if small else (128, 512),
            train_batch=2 if small else args.large_batch,
            steps=2 if small else 10,
            gen_batches=(1, 2) if small else (1, 32),
            new_tokens=4 if small else 64,
            reps=2 if small else 5,
            rank=8 if small else args.rank,
            peak=peak_tflops(device, args.peak_tflops),
        )
    elif args.only == "large":
        print("benchmarks: the large-host part needs a CUDA GPU (or --large-shape tiny)", file=sys.stderr)
    results["meta"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
