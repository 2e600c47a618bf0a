"""`irm record`, `irm analyze` and `irm ablate`: look inside what an IRM learned."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from irm.cli.options import DeviceOpt, ForceOpt, IRMHostOpt, JsonOpt, console
from irm.errors import IRMError

Opt = typer.Option
IRMOpt = Annotated[Path, Opt("--irm", help="IRM directory, or a run directory containing irm/.")]
PromptsOpt = Annotated[str, Opt("--prompts", help="Prompts file (question/prompt/text column) or builtin:NAME.")]
LimitOpt = Annotated[Optional[int], Opt("--limit", min=1, help="Use only the first N prompts.")]


def _irm_dir(path: Path) -> Path:
    from irm.training.rundir import irm_dir_of

    found = irm_dir_of(path)
    if found is not None:
        return found
    raise IRMError(
        f"{path} holds no IRM (no irm_config.json in it or in {path / 'irm'})",
        hint="pass an IRM directory or a run directory of `irm train`",
    )


def _load(irm_path: Path, host_name: str | None, device: str, force: bool) -> tuple[Any, Any]:
    from irm.core.config import IRMConfig
    from irm.core.network import IRM
    from irm.hosts.loading import load_host_for

    directory = _irm_dir(irm_path)
    host = load_host_for(IRMConfig.load(directory).host, host_name, device=device)
    return host, IRM.from_pretrained(directory, host, check_host=not force, device=host.device)


def _parse_indices(text: str) -> list[int] | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise IRMError(f"bad --indices {text!r}", hint="use auto, or hidden indices separated by commas, e.g. 5,17") from None


def record(
    irm: IRMOpt,
    out: Annotated[Path, Opt("--out", help="Recording directory to write.")],
    host: IRMHostOpt = None,
    prompts: PromptsOpt = "builtin:prompts",
    limit: LimitOpt = None,
    max_new_tokens: Annotated[int, Opt(min=1, help="Tokens to generate per prompt.")] = 32,
    batch_size: Annotated[int, Opt(min=1, help="Prompts per generate call.")] = 8,
    dtype: Annotated[str, Opt(help="float16 (2 bytes per value) or float32.")] = "float16",
    greedy: Annotated[bool, Opt("--greedy/--sample", help="Greedy decoding (default) or sampling.")] = True,
    seed: Annotated[int, Opt(help="Seed for sampling.")] = 0,
    chat: Annotated[bool, Opt("--chat/--no-chat", help="Apply the host's chat template when it has one.")] = True,
    strength: Annotated[float, Opt(help="Scale of the injected IRM output (not 0).")] = 1.0,
    measure_overhead: Annotated[
        bool, Opt("--measure-overhead", help="Also time the same generation without recording and report the ratio.")
    ] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --out directory.")] = False,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate with the IRM on and store its output for every prompt, token, layer and
    hidden index (REC/outputs.safetensors, tokens.jsonl, prompts.jsonl, meta.json).

    Example: irm record --irm runs/anger --prompts builtin:prompts --limit 16 --out rec/anger
    """
    import torch

    from irm.analysis.recording import check_recording_out, save_recording
    from irm.analysis.recording import record as run_record
    from irm.core.attach import attach
    from irm.data.rows import read_prompts
    from irm.hosts.generation import generate

    dtypes = {"float16": torch.float16, "float32": torch.float32}
    if dtype not in dtypes:
        raise IRMError(f"unknown --dtype {dtype!r}", hint="use float16 or float32")
    check_recording_out(out, overwrite=overwrite)  # before any generation
    texts = read_prompts(prompts, limit=limit)
    loaded_host, model = _load(irm, host, device, force)
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, greedy=greedy, seed=seed, chat=chat)
    timing: dict[str, float] = {}
    if measure_overhead:
        with attach(loaded_host, model, strength=strength):
            generate(loaded_host, texts[:1], max_new_tokens=2, chat=chat)  # warm-up
            started = time.perf_counter()
            for start in range(0, len(texts), batch_size):
                generate(loaded_host, texts[start : start + batch_size], **{**options, "seed": seed + start})
            timing["plain_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    rec = run_record(loaded_host, model, texts, strength=strength, dtype=dtypes[dtype], **options)
    timing["record_seconds"] = time.perf_counter() - started
    if measure_overhead:
        timing["overhead_ratio"] = timing["record_seconds"] / timing["plain_seconds"]
    rec.meta["timing"] = {k: round(v, 3) for k, v in timing.items()}
    save_recording(rec, out, overwrite=overwrite)
    size = sum(f.stat().st_size for f in out.iterdir())
    result = {
        "out": str(out),
        "prompts": len(rec.prompts),
        "tokens": len(rec.tokens),
        "shape": list(rec.outputs.shape),
        "dtype": rec.outputs.dtype.name,
        "bytes": size,
        **rec.meta["timing"],
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(
        f"[bold]recorded[/] {result['tokens']} tokens of {result['prompts']} prompts -> {out} "
        f"({size / 1e6:.1f} MB, {result['dtype']}, shape {tuple(result['shape'])})"
    )
    if measure_overhead:
        console.print(
            f"generation {timing['plain_seconds']:.2f} s, with recording {timing['record_seconds']:.2f} s: "
            f"overhead {timing['overhead_ratio']:.2f}x"
        )


def analyze(
    inputs: Annotated[list[Path], typer.Argument(help="Recording directories (irm record) or run directories (RUN/irm).")],
    out: Annotated[Path, Opt("--out", help="Directory for heatmaps and JSON reports.")],
    k: Annotated[int, Opt("--k", min=1, help="How many dominant indices to report.")] = 10,
    token_plots: Annotated[int, Opt(min=0, help="Heatmaps of single generated tokens (first prompt).")] = 4,
    frames: Annotated[int, Opt(min=0, help="Tokens in animation.gif (0: none).")] = 24,
    host_outliers: Annotated[
        bool, Opt("--host-outliers/--no-host-outliers", help="Compare with the host's outlier dimensions (loads the host).")
    ] = True,
    neutral: Annotated[str, Opt(help="Neutral texts for the host's residual-stream magnitudes.")] = "builtin:prompts",
    prompts: Annotated[str, Opt(help="Prompts to record a run directory that has no RUN/record yet.")] = "builtin:prompts",
    limit: Annotated[int, Opt(min=1, help="Prompts to record for such a run directory.")] = 16,
    max_new_tokens: Annotated[int, Opt(min=1, help="Tokens to generate for such a recording.")] = 32,
    gradients: Annotated[
        str,
        Opt(
            help="Compare with the host's loss gradient at the injection points on this data: none, train (each IRM's training data) or a file/builtin:NAME."
        ),
    ] = "none",
    gradient_rows: Annotated[int, Opt(min=1, help="Rows (a seeded sample) for --gradients.")] = 32,
    logit_lens: Annotated[
        bool,
        Opt(
            "--logit-lens",
            help="Also write logit_lens.json: tokens promoted/suppressed by each layer's mean output and each top index through "
            "the final norm and LM head, and (for run directories) the logit change from injecting only the last k layers.",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Heatmaps (layer x hidden index: mean, per token, animation), striation score,
    dominant indices, sparsity, the host's outlier dimensions and, for several inputs,
    how consistent the dominant indices are.

    A run directory without RUN/record is first recorded (into RUN/record) on --prompts.

    Example: irm analyze rec/anger rec/joy runs/sadness --out analysis/

    --gradients train asks why stripes appear: the host's own loss gradient at each injected
    layer, before any IRM; if it points the same way in every layer, so will the IRM.

    An IRM trained with --output-rotation is analysed in both bases: the host's (what is
    injected) and its own (before R); the table's "IRM basis" column gives the latter.
    """
    from irm.analysis.pipeline import AnalyzeOptions
    from irm.analysis.pipeline import analyze as run_analyze

    options = AnalyzeOptions(
        k=k,
        token_plots=token_plots,
        frames=frames,
        host_outliers=host_outliers,
        neutral=neutral,
        prompts=prompts,
        prompt_limit=limit,
        max_new_tokens=max_new_tokens,
        device=device,
        gradients=gradients,
        gradient_rows=gradient_rows,
        logit_lens=logit_lens,
    )
    result = run_analyze(inputs, out, options)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    runs = result["runs"] if "runs" in result else [{"label": inputs[0].name, **result}]
    table = Table(title=f"IRM output analysis -> {out}")
    for col in ("run", "tokens", "striation", "layer share", f"top {min(k, 5)} indices (share)", "Hoyer", "IRM basis: striation, top 3"):
        table.add_column(col)
    for run in runs:
        top = run["top_k"]
        shown = ", ".join(f"{i} ({s:.1%})" for i, s in zip(top["indices"][:5], top["shares"][:5]))
        table.add_row(
            run["label"],
            str(run["tokens"]),
            f"{run['striation']['score']:.3f}",
            f"{run['striation']['layer_share']:.3f}",
            shown,
            f"{run['sparsity']['hoyer']['mean']:.3f}",
            _irm_basis_cell(run.get("irm_basis", {})),
        )
    console.print(table)
    for run in runs:
        for signal, c in run.get("coincidence_with_host", {}).items():
            if c["constant"]:
                console.print(f"{run['label']}: host {signal} is constant (no outlier indices)")
                continue
            console.print(
                f"{run['label']}: top-{k} shared with host {signal}: {c['shared'] or 'none'} (chance {c['expected_by_chance']:.2f})"
            )
    for run in runs:
        g = run.get("host_gradients")
        if g:
            console.print(
                f"{run['label']}: host gradient on {g['data']}: mean cosine between layers {g['mean_cosine_between_layers']:.3f}, "
                f"striation {g['striation']:.3f}, top indices {g['top_indices'][:5]}, "
                f"Spearman with the IRM's index profile {g['spearman_with_irm_profile']:.3f}"
            )
    for run in runs:
        lens = run.get("logit_lens")
        if lens:
            console.print(f"{run['label']}: logit lens, last layer's mean promotes {lens['last_layer_mean']}")
            for index, tokens in list(lens["top_indices"].items())[:3]:
                console.print(f"  index {index} promotes {tokens}")
            if "direct_effect_share" in lens:
                console.print(f"  share of the logit change from the last k layers only: {lens['direct_effect_share']}")
    for host_key, report in result.get("consistency", {}).items():
        first = report["most_often_first"]
        console.print(
            f"{host_key}: index {first['index']} ranked first in {first['runs']} of {first['of']} runs; "
            f"mean top-{k} Jaccard {report['mean_jaccard']:.3f}"
        )


def _irm_basis_cell(basis: dict[str, Any]) -> str:
    if not basis.get("rotated"):
        return "same"
    return f"{basis['striation']['score']:.3f}; " + ", ".join(str(i) for i in basis["top_k"]["indices"][:3])


def ablate(
    irm: IRMOpt,
    indices: Annotated[str, Opt("--indices", help="auto (the IRM's top --k indices on these prompts) or N,M,...")] = "auto",
    k: Annotated[int, Opt("--k", min=1, help="How many indices --indices auto picks.")] = 1,
    host: IRMHostOpt = None,
    prompts: PromptsOpt = "builtin:prompts",
    limit: Annotated[int, Opt(min=1, help="Use only the first N prompts.")] = 16,
    draws: Annotated[int, Opt(min=0, help="Random index sets of the same size to compare against.")] = 5,
    seed: Annotated[int, Opt(help="Seed for the random index sets.")] = 0,
    max_new_tokens: Annotated[int, Opt(min=1, help="Tokens to generate per prompt.")] = 48,
    batch_size: Annotated[int, Opt(min=1, help="Prompts per generate call.")] = 8,
    target: Annotated[
        Optional[str], Opt(help="Target emotion (anger, sadness, joy, neutral; default: the one the IRM raises most).")
    ] = None,
    emotion: Annotated[bool, Opt("--emotion/--no-emotion", help="Score emotions (loads the offline scorer).")] = True,
    out: Annotated[Optional[Path], Opt("--out", help="Also write the report as JSON here.")] = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Zero hidden indices of the IRM output in every injected layer during generation and
    report how the emotion and fluency metrics change, against zeroing as many random
    indices (--draws sets).

    Example: irm ablate --irm runs/anger --indices auto --k 1 --draws 5
    """
    from irm.data.rows import read_prompts
    from irm.evaluation.ablation import ablate as run_ablate
    from irm.evaluation.ablation import dominant_indices

    chosen = _parse_indices(indices)
    loaded_host, model = _load(irm, host, device, force)
    texts = read_prompts(prompts, limit=limit)
    if chosen is None:
        chosen = dominant_indices(loaded_host, model, texts, k, max_new_tokens=max_new_tokens, batch_size=batch_size)
    scorer = None
    if emotion:
        from irm.evaluation.scoring import EmotionScorer

        scorer = EmotionScorer()
    report = run_ablate(
        loaded_host,
        model,
        chosen,
        texts,
        draws=draws,
        seed=seed,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        scorer=scorer,
        target=target,
    )
    report["indices_from"] = f"auto: the IRM's top {k} on these prompts" if indices.strip().lower() == "auto" else "--indices"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if as_json:
        print(json.dumps(report, indent=2))
        return
    metrics = list(report["irm"])
    table = Table(title=f"zeroing indices {report['indices']} ({report['prompts']} prompts)")
    table.add_column("condition")
    for m in metrics:
        table.add_column(m, justify="right")
    rows = [("host (no IRM)", report["host"]), ("IRM", report["irm"]), ("IRM, zeroed", report["ablated"])]
    rows += [(f"random {r['indices']}", r) for r in report["random"]]
    for name, values in rows:
        table.add_row(name, *(f"{values[m]:.3f}" for m in metrics))
    console.print(table)
    if "target" in report:
        removed = report["effect_removed_ablated"]
        randoms = [r for r in report["effect_removed_random"] if r is not None]
        console.print(
            f"target {report['target']}: the IRM adds {report['irm_effect']:+.3f}; zeroing the indices removes "
            + (f"{removed:.0%} of it" if removed is not None else "n/a")
            + (f" (random indices: mean {sum(randoms) / len(randoms):.0%})" if randoms else "")
        )
