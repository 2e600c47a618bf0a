"""`irm evaluate`: alignment, fluency and drift of IRMs and baselines, with error bars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from irm.cli.options import DEFAULT_HOST, DeviceOpt, HostEditOpt, HostOpt, JsonOpt, console
from irm.errors import IRMError
from irm.training.rundir import irm_dir_of


def parse_strengths(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise IRMError(f"bad --strength {text!r}", hint="use numbers separated by commas, e.g. 0,0.5,1,2,4") from None
    if not values:
        raise IRMError("--strength names no strength", hint="e.g. --strength 1 or --strength 0,0.5,1,2,4")
    return values


def parse_adapter_specs(specs: list[str]) -> dict[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named after the directory, or its parent for ``RUN/irm``); a run
    folder stands for its ``RUN/irm``."""
    named: dict[str, Path] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if sep and name and not Path(spec).exists():
            path = Path(rest)
        else:
            path = Path(spec)
            name = path.parent.name if path.name == "irm" and path.parent.name else path.name
        path = irm_dir_of(path) or path  # a run folder stands for its RUN/irm
        if name in named or name == "host":
            raise IRMError(f"two adapters are called {name!r}", hint="name them: --irm paper=DIR --irm lowrank=DIR")
        named[name] = path
    return named


def _cell(estimate: Any) -> str:
    mean, lo, hi = estimate
    if mean != mean:  # NaN
        return "-"
    return f"{mean:.3g}\n[{lo:.3g}, {hi:.3g}]"


def evaluate(
    irm: Annotated[list[str], typer.Option("--irm", help="[NAME=]DIR of an IRM, low-rank IRM or steering vector; repeat to compare.")],
    host: HostOpt = DEFAULT_HOST,
    host_edit: HostEditOpt = "none",
    strength: Annotated[str, typer.Option(help="Strength(s), comma-separated: a sweep such as 0,0.5,1,2,4 (0 = host alone).")] = "1",
    prompts: Annotated[
        str, typer.Option(help="Held-out prompts: a file with a question/prompt/text column, or builtin:NAME.")
    ] = "builtin:prompts",
    max_prompts: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N prompts.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Generations per prompt (sampled; seeds shared by every condition).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of sampling and of the bootstrap.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate per prompt.")] = 48,
    greedy: Annotated[bool, typer.Option("--greedy/--sample", help="Greedy decoding or sampling (default).")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    emotion: Annotated[Optional[str], typer.Option(help="Target emotion (default: read from the adapters' training data).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for report.json, report.csv, generations.jsonl, curve.png.")] = Path(
        "runs/eval"
    ),
    force: Annotated[bool, typer.Option("--force", help="Attach adapters made for another host.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an evaluation already in --out (only its own files).")] = False,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Generate for held-out prompts with the host alone and with each adapter at each
    strength (same seeds, same decoding), and report target-emotion strength, valence,
    fluency and drift with bootstrapped 95% intervals. Examples:

      irm evaluate --irm runs/anger/irm --strength 0,0.5,1,2,4

      irm evaluate --irm paper=runs/anger/irm --irm lowrank=runs/anger-r8/irm --irm steer=runs/anger-steer
    """
    from irm.core.adapters import load_adapter
    from irm.data.rows import read_prompts
    from irm.evaluation.evaluate import (
        LEAD_METRICS,
        METRIC_GROUPS,
        METRICS,
        check_report_dir,
        resolve_emotion,
        write_report,
    )
    from irm.evaluation.evaluate import evaluate as run_evaluate
    from irm.hosts.loading import load_host

    strengths = parse_strengths(strength)
    paths = parse_adapter_specs(irm)
    check_report_dir(out, overwrite=overwrite)  # before any slow work: an existing evaluation is kept
    prompt_list = read_prompts(prompts, limit=max_prompts)
    loaded = load_host(host, device=device, edit=host_edit)
    adapters = {name: load_adapter(path, loaded, check_host=not force, device=loaded.device) for name, path in paths.items()}
    report = run_evaluate(
        loaded,
        adapters,
        prompt_list,
        target=resolve_emotion(adapters, emotion),
        strengths=strengths,
        samples=samples,
        seed=seed,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
    )
    files = write_report(report, out)
    if as_json:
        print(json.dumps({**report.to_dict(), "files": {k: str(v) for k, v in files.items()}}, indent=2))
        return
    title = f"{report.target_emotion}: {report.prompts} prompts x {report.samples} sample(s), mean [95% CI]"
    groups = (("alignment", METRIC_GROUPS["alignment"]), ("fluency and drift", METRIC_GROUPS["fluency"] + METRIC_GROUPS["drift"]))
    for heading, metrics in groups:
        table = Table(title=f"{heading} -- {title}", show_lines=True)
        table.add_column("condition", style="bold")
        for m in LEAD_METRICS + metrics:
            table.add_column(METRICS[m].replace("target", report.target_emotion), justify="right")
        for c in report.conditions:
            table.add_row(f"{c.name}\n({c.kind})", *(_cell(c.metrics[m]) for m in LEAD_METRICS + metrics))
        console.print(table)
    console.print(f"written to {out}: " + ", ".join(p.name for p in files.values()))
