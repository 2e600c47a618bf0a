"""`irm data ...` and `irm score`: datasets, their checks, synthesis, and the emotion scorer."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from irm.cli.options import DEFAULT_HOST, JsonOpt, console
from irm.core.io import check_output_file
from irm.errors import IRMError

data_app = typer.Typer(help="Alignment datasets: list the built-in ones, check a file, synthesize new ones.", no_args_is_help=True)


@data_app.command("list")
def list_datasets(as_json: JsonOpt = False) -> None:
    """List the built-in datasets (use them as builtin:NAME)."""
    from irm.data.rows import builtin_datasets, count_rows

    rows = [{"name": f"builtin:{n}", "rows": count_rows(f"builtin:{n}")} for n in builtin_datasets()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in datasets")
    table.add_column("name")
    table.add_column("rows", justify="right")
    for r in rows:
        table.add_row(r["name"], str(r["rows"]))
    console.print(table)


@data_app.command("check")
def check(
    file: Annotated[str, typer.Argument(help="CSV/JSONL/Parquet file or builtin:NAME.")],
    host: Annotated[Optional[str], typer.Option(help="Also count tokens with this host's tokenizer.")] = None,
    max_length: Annotated[int, typer.Option(min=2, help="Flag rows longer than this many tokens.")] = 128,
    as_json: JsonOpt = False,
) -> None:
    """Validate a data file: format, columns, empty rows, duplicates, token lengths.

    Exit code 0 when the file is usable (warnings allowed), 2 when it has errors."""
    from irm.data.rows import check_data

    tokenizer, context = None, None
    if host:
        from irm.hosts.loading import load_host

        loaded = load_host(host, device="cpu")
        tokenizer, context = loaded.tokenizer, loaded.context_length
    report = check_data(file, tokenizer, max_length=max_length, context=context)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        # soft_wrap: a long path is never broken across lines (scripts and tests grep for it)
        console.print(
            f"[bold]{escape(str(report.path))}[/]: {report.rows} rows, {report.kind}, columns {escape(', '.join(report.columns))}",
            soft_wrap=True,
        )
        if report.token_lengths:
            t = report.token_lengths
            console.print(f"tokens per row: min {t['min']}, mean {t['mean']:.1f}, max {t['max']}")
        for w in report.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
        for e in report.errors:
            console.print(f"[bold red]error:[/] {escape(e)}", highlight=False, soft_wrap=True)
        console.print("[green]ok[/]" if report.ok else "[red]not usable until the errors are fixed[/]")
    if not report.ok:
        raise typer.Exit(2)


@data_app.command("synthesize")
def synthesize_cmd(
    emotion: Annotated[str, typer.Option(help="anger, sadness, joy or neutral.")],
    out: Annotated[Path, typer.Option(help="Output file (.csv, .jsonl or .parquet).")],
    source: Annotated[
        str,
        typer.Option(
            help="Neutral question/answer pairs: a file, builtin:chatterbot, builtin:wordnet (Debian wordnet-base) or builtin:python-stdlib."
        ),
    ] = "builtin:chatterbot",
    method: Annotated[
        str,
        typer.Option(
            help="rewrite (an instruct model rewrites), framing (phrase-bank tone around the answer) or "
            "interleave (phrase-bank tone woven between the answer's sentences; every word of it kept)."
        ),
    ] = "rewrite",
    generator: Annotated[str, typer.Option(help="Host that rewrites (any local chat model).")] = DEFAULT_HOST,
    candidates: Annotated[int, typer.Option(min=1, help="Candidates per pair; the best accepted one is kept.")] = 4,
    margin: Annotated[float, typer.Option(help="Minimum p(target) - p(runner-up) to keep a candidate.")] = 0.2,
    seed: Annotated[int, typer.Option()] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per batch.")] = 8,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N pairs.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 96,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make toned question/answer data: K candidates per neutral pair, scored, best kept.

    Interrupted runs resume from OUT.partial.jsonl; OUT.provenance.json records the
    generator, prompt, seed, thresholds and counts kept and dropped."""
    from irm.data.synthesis import (
        SynthesisConfig,
        partial_path,
        settings_path,
        synthesize,
    )

    if out.suffix.lower() not in (".csv", ".jsonl", ".parquet"):
        raise IRMError(f"--out {out}: unknown output type {out.suffix!r}", hint="use .csv, .jsonl or .parquet")
    check_output_file(out, overwrite=overwrite)
    if not math.isfinite(margin) or not -1 <= margin <= 1:
        raise IRMError(f"--margin {margin}: must be a number between -1 and 1", hint="e.g. --margin 0.2")
    config = SynthesisConfig(
        emotion=emotion,
        source=source,
        method=method,
        generator=generator,
        candidates=candidates,
        margin=margin,
        seed=seed,
        batch_size=batch_size,
        limit=limit,
        max_new_tokens=max_new_tokens,
    )
    partial, settings = partial_path(out), settings_path(out)
    had_partial = partial.exists()
    created = out.parent.absolute()
    while not created.parent.exists():
        created = created.parent  # the outermost folder this command would create
    created_any = not out.parent.exists()
    try:
        with Progress(console=console, transient=True, disable=as_json) as bar:
            task = bar.add_task(f"synthesizing {emotion}", total=None)
            provenance = synthesize(config, out, progress=lambda done, total: bar.update(task, completed=done, total=total))
    except BaseException:
        # Keep a partial file with finished batches (the next run resumes from it); remove
        # what this run made before any batch finished.
        if not had_partial and partial.is_file() and partial.stat().st_size == 0:
            partial.unlink()
            settings.unlink(missing_ok=True)
        if created_any and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)
        raise
    if as_json:
        print(json.dumps(provenance, indent=2))
    else:
        console.print(
            f"kept {provenance['kept']} of {provenance['source_rows']} pairs -> {escape(str(out))} (provenance: {escape(str(out))}.provenance.json)",
            soft_wrap=True,
        )


def score(
    inputs: Annotated[list[str], typer.Argument(help="Texts, or one data file (its answer or text column is scored).")],
    as_json: JsonOpt = False,
) -> None:
    """Score texts with the validated offline emotion scorer (anger, sadness, joy, neutral,
    plus Plutchik's eight emotions and VADER valence)."""
    from irm.cli.generate import check_texts
    from irm.data.rows import FORMATS, read_texts
    from irm.evaluation.scoring import EmotionScorer

    texts = inputs
    names = [t for t in inputs if t.startswith("builtin:") or (Path(t).suffix.lower() in FORMATS and not any(c.isspace() for c in t))]
    if len(inputs) > 1 and names:
        raise IRMError(
            f"{names[0]!r} looks like a data file: score reads either one data file or texts, not several files",
            hint=f"score one file at a time (irm score {names[0]}), or put a space in a text that only looks like a file name",
        )
    check_texts(inputs, "text", allow_empty=True)
    first = inputs[0] if len(inputs) == 1 else ""
    looks_like_file = bool(first) and Path(first).suffix.lower() in FORMATS and not any(c.isspace() for c in first)
    if first.startswith("builtin:") or (looks_like_file and Path(first).exists()):
        texts = read_texts(first)
    elif looks_like_file:
        raise IRMError(
            f"{first}: file not found",
            hint="check the path; to score that text itself, put it in quotes together with a space or another text",
        )
    if not any(t.strip() for t in texts):
        raise IRMError("nothing to score: every text is empty", hint='pass texts, e.g. irm score "I am so angry!"')
    results = [{"text": t, **s.to_dict()} for t, s in zip(texts, EmotionScorer().score(texts))]
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table()
    for col in ("text", "top", "anger", "sadness", "joy", "neutral", "valence"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r["text"][:80], r["top"], *(f"{r[f'p_{k}']:.2f}" for k in ("anger", "sadness", "joy", "neutral")), f"{r['valence']:+.2f}"
        )
    console.print(table)
