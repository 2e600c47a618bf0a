"""Serving throughput side by side: `transformers serve` (with and without continuous
batching), `irm serve` with no IRM, and `irm serve` with a mix of two IRMs and three
strengths, all on SmolLM2-135M-Instruct on this CPU, in one run.

    OMP_NUM_THREADS=1 python benchmarks/serve.py --out benchmarks/results

Each server is started in turn on 127.0.0.1 (offline), warmed up, then driven by 1, 4 and
8 concurrent clients (the real `openai` client, chat completions, greedy, a fixed
``max_tokens``); each client sends ``--requests`` requests one after another. Reported per
server and concurrency: aggregate generated tokens/s over the phase's wall time, and the
p50/p95 latency of a whole request. Every server gets the same torch thread count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how rain forms.",
    "Describe a walk through a busy market.",
    "Tell me everything you know about the history of bread.",
    "Write a letter to a friend about your summer.",
    "Explain how a bicycle works, step by step.",
    "Describe the life of a honey bee.",
    "Write a poem about the sea and the wind.",
]
STRENGTHS = (0.5, 1.0, 2.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not come up")


def make_irms(folder: Path) -> dict[str, Path]:
    """Two paper-shaped IRMs with random (non-zero) output layers: all 30 layers, and 0-14."""
    import torch

    import irm

    host = irm.load_host("smollm2-135m-instruct", device="cpu")
    out = {}
    for seed, (name, layers) in enumerate([("all30", "all"), ("first15", "0-14")]):
        model = irm.IRM.for_host(host, layers, output_init="default", seed=seed)
        with torch.no_grad():
            model.output_layer.weight.mul_(0.05)
            model.output_layer.bias.zero_()
        out[name] = model.save_pretrained(folder / name)
    return out


def run_phase(base_url: str, model: str, clients: int, requests: int, max_tokens: int, extra: list[dict[str, Any]]) -> dict[str, Any]:
    from openai import OpenAI

    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        api = OpenAI(base_url=base_url + "/v1", api_key="none", timeout=900, max_retries=0)
        for r in range(requests):
            k = c * requests + r
            start = time.perf_counter()
            try:
                reply = api.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
                    max_tokens=max_tokens,
                    temperature=0,
                    extra_body=extra[k % len(extra)] if extra else None,
                )
            except Exception as exc:  # recorded, the phase goes on
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                tokens.append(reply.usage.completion_tokens if reply.usage else 0)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else None

    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "tokens": sum(tokens),
        "wall_s": wall,
        "tokens_per_s": sum(tokens) / wall,
        "latency_p50_s": pct(0.5),
        "latency_p95_s": pct(0.95),
        "mean_tokens_per_request": statistics.mean(tokens) if tokens else None,
    }


def bench_server(name: str, cmd: list[str], model: str, args: argparse.Namespace, extra: list[dict[str, Any]], env: dict[str, str]) -> dict:
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    log = open(Path(tempfile.gettempdir()) / f"irm-serve-bench-{name.split()[0]}-{port}.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        run_phase(url, model, 2, 1, 4, extra)  # warm-up (lazy inits, first compiles)
        phases = []
        for clients in args.clients:
            phase = run_phase(url, model, clients, args.requests, args.max_tokens, extra)
            print(
                f"   {clients} clients: {phase['tokens_per_s']:.1f} tokens/s, p50 {phase['latency_p50_s']:.2f} s, "
                f"p95 {phase['latency_p95_s']:.2f} s, {phase['requests']} ok, {len(phase['errors'])} errors",
                flush=True,
            )
            phases.append(phase)
        return {"name": name, "command": cmd, "phases": phases}
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def flops_ratio(irm_dirs: dict[str, Path], context: int) -> float:
    """Mean IRM/host forward FLOPs per token over the (c) mix."""
    from transformers import AutoConfig

    from irm.core.config import IRMConfig
    from irm.core.flops import host_forward_flops, irm_flops
    from irm.hosts.loading import cache_dir

    host_config = AutoConfig.from_pretrained(cache_dir() / "hosts" / "smollm2-135m-instruct")
    host = host_forward_flops(host_config, context)
    return statistics.mean(irm_flops(IRMConfig.load(d)) / host for d in irm_dirs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=2, help="requests per client per phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=None, help="server names to run (tf, tf-cb, irm, irm-mix)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from irm.hosts.loading import cache_dir

    folder = cache_dir() / "hosts" / "smollm2-135m-instruct"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("OMP_NUM_THREADS", "1")
    tmp = Path(tempfile.mkdtemp(prefix="irm-serve-bench-"))
    irm_dirs = make_irms(tmp)
    tf = [str(bin_dir / "transformers"), "serve", str(folder), "--host", "127.0.0.1", "--port", "{port}", "--device", "cpu"]
    irm_cmd = [str(bin_dir / "irm"), "serve", "--host", "smollm2-135m-instruct", "--port", "{port}", "--device", "cpu", "--max-batch", "8"]
    mix = [{"irm": name, "irm_strength": s} for s in STRENGTHS for name in irm_dirs]
    servers = {
        "tf": ("transformers serve", tf, str(folder), []),
        "tf-cb": ("transformers serve --continuous-batching", tf + ["--continuous-batching"], str(folder), []),
        "irm": ("irm serve (no IRM)", irm_cmd, "smollm2-135m-instruct", []),
        "irm-mix": (
            "irm serve (2 IRMs x 3 strengths)",
            irm_cmd + [f"--irm={n}={d}" for n, d in irm_dirs.items()],
            "smollm2-135m-instruct",
            mix,
        ),
    }
    results = []
    try:
        for key, (name, cmd, model, extra) in servers.items():
            if args.only is None or key in args.only:
                results.append({"key": key, **bench_server(name, cmd, model, args, extra, env)})
        ratio = flops_ratio(irm_dirs, context=64)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the two IRMs: about 250 MB
    report = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": platform.platform(),
            "commit": os.environ.get("IRM_BENCH_COMMIT")
            or subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip(),
            "cpus": os.cpu_count(),
            "omp_threads": env["OMP_NUM_THREADS"],
            "max_tokens": args.max_tokens,
            "requests_per_client": args.requests,
            "irm_over_host_flops": ratio,
        },
        "servers": results,
    }
    report["targets"] = targets(report)
    (Path(args.out) / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (Path(args.out) / "serve.md").write_text(markdown(report))
    print(markdown(report))


def _at(server: dict, clients: int) -> dict | None:
    return next((p for p in server["phases"] if p["clients"] == clients), None)


def targets(report: dict) -> dict[str, Any]:
    by = {s["key"]: s for s in report["servers"]}
    out: dict[str, Any] = {}
    irm, mix = by.get("irm"), by.get("irm-mix")
    anchors = [by[k] for k in ("tf", "tf-cb") if k in by]
    if irm and anchors and _at(irm, 8):
        best = max((_at(a, 8) or {"tokens_per_s": 0})["tokens_per_s"] for a in anchors)
        out["b_over_best_a_at_8"] = _at(irm, 8)["tokens_per_s"] / best if best else None
    if irm and _at(irm, 1) and _at(irm, 8):
        out["b_8_over_1"] = _at(irm, 8)["tokens_per_s"] / _at(irm, 1)["tokens_per_s"]
    if mix and _at(mix, 1) and _at(mix, 8):
        out["c_8_over_1"] = _at(mix, 8)["tokens_per_s"] / _at(mix, 1)["tokens_per_s"]
    if irm and mix and _at(irm, 8) and _at(mix, 8):
        out["c_cost_over_b_at_8"] = _at(irm, 8)["tokens_per_s"] / _at(mix, 8)["tokens_per_s"]
        out["c_cost_limit"] = 1 + report["meta"]["irm_over_host_flops"] + 0.05
    return out


def markdown(report: dict) -> str:
    lines = ["| server | clients | tokens/s | p50 latency (s) | p95 latency (s) | requests ok / errors |", "|---|---|---|---|---|---|"]
    for s in report["servers"]:
        for p in s["phases"]:
            p50 = f"{p['latency_p50_s']:.2f}" if p["latency_p50_s"] is not None else "-"
            p95 = f"{p['latency_p95_s']:.2f}" if p["latency_p95_s"] is not None else "-"
            lines.append(
                f"| {s['name']} | {p['clients']} | {p['tokens_per_s']:.1f} | {p50} | {p95} | {p['requests']} / {len(p['errors'])} |"
            )
    lines.append("")
    for key, value in report["targets"].items():
        lines.append(f"- {key}: {value:.3f}" if isinstance(value, float) else f"- {key}: {value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
