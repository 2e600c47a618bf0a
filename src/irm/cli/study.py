"""`irm study`: the paper's battery on one host, in one resumable command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from irm.cli.options import console, err_console
from irm.study.config import StudyConfig, StudyDir, help_of

Opt = typer.Option


def _sets(text: str) -> list[str]:
    """``all,0-7`` -> two sets; with a ``;`` anywhere, sets are separated by ``;`` (``all;2,3``)."""
    return [part.strip() for part in text.split(";" if ";" in text else ",") if part.strip()]


def study(
    host: Annotated[str, typer.Argument(help=help_of("host"))],
    out: Annotated[Path, Opt("--out", help=help_of("out"))],
    alignments: Annotated[Optional[str], Opt(help=help_of("alignments") + " [anger,sadness,joy]")] = None,
    seeds: Annotated[Optional[int], Opt(help=help_of("seeds") + " [2]")] = None,
    layers: Annotated[
        Optional[str],
        Opt(help="Layer sets: all,0-7 (comma-separated); when a set is itself a list, separate sets with ';' (all;2,3) [all,0-7]."),
    ] = None,
    steps: Annotated[Optional[int], Opt(help=help_of("steps") + " [30]")] = None,
    batch_size: Annotated[Optional[int], Opt(help=help_of("batch_size") + " [8]")] = None,
    lr: Annotated[Optional[float], Opt(help=help_of("lr") + " [2e-3]")] = None,
    warmup_steps: Annotated[Optional[int], Opt(help=help_of("warmup_steps") + " [6]")] = None,
    max_length: Annotated[Optional[int], Opt(help=help_of("max_length") + " [64]")] = None,
    max_rows: Annotated[Optional[int], Opt(help=help_of("max_rows"))] = None,
    rank: Annotated[Optional[int], Opt(help=help_of("rank") + " [off: the paper's IRM]")] = None,
    checkpoint_every: Annotated[Optional[int], Opt(help=help_of("checkpoint_every") + " [10]")] = None,
    optimizer: Annotated[Optional[str], Opt(help=help_of("optimizer") + " [adam]")] = None,
    momentum: Annotated[Optional[float], Opt(help=help_of("momentum") + " [0.9]")] = None,
    output_rotation: Annotated[Optional[int], Opt(help=help_of("output_rotation") + " [off]")] = None,
    input_rotation: Annotated[Optional[int], Opt(help=help_of("input_rotation") + " [off]")] = None,
    host_edit: Annotated[Optional[str], Opt(help=help_of("host_edit") + " [none]")] = None,
    prompts: Annotated[Optional[str], Opt(help=help_of("prompts") + " [builtin:prompts]")] = None,
    record_prompts: Annotated[Optional[int], Opt(help=help_of("record_prompts") + " [8]")] = None,
    max_new_tokens: Annotated[Optional[int], Opt(help=help_of("max_new_tokens") + " [24]")] = None,
    top_k: Annotated[Optional[int], Opt("--top-k", help=help_of("top_k") + " [10]")] = None,
    neutral_prompts: Annotated[Optional[int], Opt(help=help_of("neutral_prompts") + " [16]")] = None,
    massive_ratio: Annotated[Optional[float], Opt(help=help_of("massive_ratio") + " [100]")] = None,
    gradient_rows: Annotated[Optional[int], Opt(help=help_of("gradient_rows") + " [32]")] = None,
    ablation_k: Annotated[Optional[int], Opt("--ablation-k", help=help_of("ablation_k") + " [10]")] = None,
    ablation_draws: Annotated[Optional[int], Opt(help=help_of("ablation_draws") + " [5]")] = None,
    ablation_prompts: Annotated[Optional[int], Opt(help=help_of("ablation_prompts") + " [24]")] = None,
    ablation_new_tokens: Annotated[Optional[int], Opt(help=help_of("ablation_new_tokens") + " [32]")] = None,
    device: Annotated[Optional[str], Opt(help=help_of("device") + " [auto]")] = None,
    resume: Annotated[
        bool,
        Opt(
            "--resume", help="Continue the study in --out where it stopped (after a crash or kill -9); starts it if --out is new or empty."
        ),
    ] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace the study in --out (never a folder that holds other files).")] = False,
    list_only: Annotated[bool, Opt("--list", help="Show the runs and stages and whether each is done; run nothing.")] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Progress bars with the time left, per stage (on stderr).")] = True,
    as_json: Annotated[bool, Opt("--json", help="Print findings.json on stdout when done.")] = False,
) -> None:
    """Run the paper's battery on one host: train alignments x seeds x layer sets, record
    each IRM, measure stripes and dominant indices against the noise level, their
    consistency across runs, the host's massive-activation dimensions, the host's loss
    gradient, the logit lens of the top indices and of the last layers, and ablate the top-k
    indices against random ones. Writes OUT/findings.json (the host's row of the cross-host
    table) and OUT/report.html.

    The basis tests of docs/findings.md section 6 are options: --optimizer sgd (with its own
    --lr), --output-rotation SEED (then every measure is also given in the IRMs' own basis),
    --input-rotation SEED, --host-edit fold-norm|untie|permute:SEED.

    Every stage writes its outputs atomically and is skipped once done: after a crash or
    kill -9, the same command with --resume continues where it stopped.

    Examples:

      irm study smollm2-135m-instruct --out runs/study-smollm2          # 12 runs: ~30 min of one CPU core

      irm study tiny-random-llama --out /tmp/s --alignments anger --seeds 1 --layers all,0-1 --steps 4

      irm study gemma3-270m --out runs/study-gemma3 --resume            # continue after an interruption

      irm study smollm2-135m-instruct --out runs/study-rot --output-rotation 1      # are the stripes the host's or Adam's?
    """
    from irm.study.runner import run_study, study_status

    given = {k: v for k, v in dict(locals()).items() if k in StudyConfig.__dataclass_fields__ and v is not None}
    if alignments is not None:
        given["alignments"] = [a.strip() for a in alignments.split(",")]
    if layers is not None:
        given["layers"] = _sets(layers)
    given.update(host=host, out=str(out))
    study_dir = StudyDir(out)
    base = study_dir.read_config().to_dict() if (resume or list_only) and study_dir.is_study() else {}
    config = StudyConfig.from_dict({**base, **given}, source="flags")
    if list_only:
        _print_status(study_status(config), as_json)
        return
    result = run_study(config, resume=resume, overwrite=overwrite, progress=progress, console=err_console)
    if as_json:
        print(json.dumps(result.findings, indent=2))
        return
    from irm.report.study import headline_records

    table = Table(title=f"irm study: {result.findings['row']['host']} -> {result.out}", show_lines=False)
    table.add_column("measure")
    table.add_column("value")
    for record in headline_records(result.findings["row"]):
        table.add_row(record["measure"], record["value"])
    console.print(table)
    console.print(f"findings: {result.out / 'findings.json'}\nreport: {result.report}")


def _print_status(status: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    table = Table(title=f"irm study {status['out']}")
    table.add_column("run or stage")
    table.add_column("status")
    for run in status["runs"]:  # type: ignore[attr-defined]
        table.add_row(run["name"], run["status"])
    for name, state in status["stages"].items():  # type: ignore[attr-defined]
        table.add_row(f"stage {name}", state)
    console.print(table)
