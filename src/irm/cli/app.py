"""The ``irm`` command line: the app and its commands, registered explicitly here.

Each command is a thin layer over the Python API and lives in the module of its group;
``from irm.cli import app`` gives the complete command line without running ``main()``.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from irm.cli import (
    analysis,
    data,
    demo,
    evaluate,
    generate,
    hosts,
    reference,
    report,
    serve,
    steer,
    study,
    sweep,
    train,
    zoo,
)
from irm.cli.options import err_console
from irm.errors import IRMError

app = typer.Typer(
    help="Injectable Realignment Models: train a small network that steers a frozen language model, "
    "generate with it on, off or scaled, and look inside what it learned.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command()(hosts.hosts)
app.command()(generate.generate)
app.command()(demo.demo)
app.command()(train.train)
app.command()(sweep.sweep)
app.command()(study.study)
app.command()(report.report)
app.command()(serve.serve)
app.command()(evaluate.evaluate)
app.command()(data.score)
app.command("import-reference")(reference.import_reference)
app.command()(analysis.record)
app.command()(analysis.analyze)
app.command()(analysis.ablate)
app.add_typer(data.data_app, name="data")
app.add_typer(steer.steer_app, name="steer")
app.add_typer(zoo.zoo_app, name="zoo")


def main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except IRMError as exc:
        if debug:
            raise
        # soft_wrap: no hard line breaks inside paths when stderr is not a terminal
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if exc.hint:
            err_console.print(f"[bold]fix:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
        sys.exit(2)
