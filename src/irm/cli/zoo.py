"""`irm zoo build` and `irm zoo list`: small LMs pre-trained here that differ from a base
design in exactly one architecture choice, to load as hosts (``--host zoo-...``)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from irm.cli.options import JsonOpt, console, err_console
from irm.errors import IRMError

zoo_app = typer.Typer(
    help="The architecture zoo: small LMs pre-trained on the same corpus and budget, each differing from a base design "
    "(RoPE, pre-norm RMSNorm, tied head) in one choice; they load as hosts by name (--host zoo-rope-rmsnorm-tied).",
    no_args_is_help=True,
)

OutOpt = Annotated[str, typer.Option("--out", help="Zoo folder: 'cache' ($IRM_CACHE/zoo, where host names look) or a folder.")]


@zoo_app.command("build")
def build(
    variants: Annotated[
        Optional[list[str]],
        typer.Option(
            "--variants",
            help="Variants to build (repeat or comma-separate): base, learned, nope, layernorm, postnorm, untied, or host names. Default: all.",
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option("--steps", min=1, help="Training steps per model (default: the recipe's; another value is another recipe)."),
    ] = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            "--seed",
            min=0,
            help="Training seed: initialisation and batch order, same corpus (default: the recipe's, 0; another value is another recipe).",
        ),
    ] = None,
    recipe: Annotated[
        str, typer.Option("--recipe", help="standard (the zoo of the findings, minutes per model on a CPU) or micro (seconds; for tests).")
    ] = "standard",
    out: OutOpt = "cache",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a zoo folder that was built with another recipe.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Pre-train the zoo: the shared corpus and tokenizer first, then each variant, with its
    validation perplexity and massive-activation dims. Resumable: finished models are kept,
    a killed build resumes from its checkpoints; run it again with the same options."""
    from irm.zoo.build import BuildProgress, build_zoo, plan_build
    from irm.zoo.variants import RECIPES

    if recipe not in RECIPES:
        raise IRMError(f"--recipe {recipe!r} is not a zoo recipe", hint="use " + " or ".join(RECIPES))
    names = [n.strip() for item in variants or [] for n in item.split(",") if n.strip()]
    plan = plan_build(out, names or None, RECIPES[recipe].with_steps(steps).with_seed(seed), overwrite=overwrite)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, disable=as_json) as bar:
        task = bar.add_task("zoo", total=plan.steps_to_train or 1, loss="")

        class Shown(BuildProgress):
            def stage(self, text: str) -> None:
                bar.update(task, description=text)

            def start_model(self, variant: Any, done_steps: int) -> None:
                bar.update(task, description=f"{variant.name}", advance=done_steps)

            def step(self, variant: Any, step: int, loss: float) -> None:
                bar.update(task, advance=1, loss=f"loss {loss:.3f}")

            def finish_model(self, variant: Any, report: dict[str, Any]) -> None:
                if not as_json:
                    bar.console.print(f"{variant.name}: validation perplexity {report['val']['perplexity']:.2f}")

        reports = build_zoo(plan, Shown())
    summary = [
        {
            "name": r["name"],
            "change": r["change"],
            "folder": str(plan.zoo / r["name"]),
            "cached": plan.status[r["name"]] == "built",
            "val_perplexity": r["val"]["perplexity"],
            "val_perplexity_ci95": r["val"]["perplexity_ci95"],
            "massive_dims": r["massive_activations"]["residual_max_abs"]["top_k"],
            "train_seconds": r["train_seconds"],
        }
        for r in reports
    ]
    if as_json:
        print(json.dumps({"zoo": str(plan.zoo), "recipe": plan.recipe.name, "models": summary}, indent=2))
        return
    how = "--host NAME (irm zoo list)" if out == "cache" else f"--host {plan.zoo}/NAME"
    console.print(
        f"zoo {plan.zoo} (recipe {plan.recipe.name}): {len(summary)} models; load one with {how}", highlight=False, soft_wrap=True
    )


@zoo_app.command("list")
def list_models(out: OutOpt = "cache", as_json: JsonOpt = False) -> None:
    """List the zoo's variants: what each changes, whether it is built, its validation
    perplexity and its top massive-activation dims."""
    from irm.zoo.build import list_zoo, resolve_zoo_dir

    rows = list_zoo(out)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"architecture zoo ({resolve_zoo_dir(out)})")
    for col in ("name", "changes", "status", "val ppl (95% CI)", "massive dims (x median)"):
        table.add_column(col)
    for r in rows:
        ppl = massive = ""
        if r["status"] == "built":
            low, high = r["val_perplexity_ci95"]
            ppl = f"{r['val_perplexity']:.1f} ({low:.1f}-{high:.1f})"
            massive = ", ".join(f"{d} ({x:.0f}x)" for d, x in zip(r["massive_dims"][:3], r["massive_ratio"][:3]))
        table.add_row(r["name"], r["change"], r["status"], ppl, massive)
    console.print(table)
