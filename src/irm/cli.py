"""The ``irm`` command line. Each command is a thin layer over the Python API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import IRMError

app = typer.Typer(
    help="Injectable Realignment Models: train a small network that steers a frozen language model, "
    "generate with it on, off or scaled, and look inside what it learned.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(emoji=False)  # data names such as builtin:anger: must not turn into emoji
err_console = Console(stderr=True, emoji=False)

HostOpt = Annotated[str, typer.Option("--host", help="Built-in host name (see `irm hosts`), local model folder or .gguf file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


@app.command()
def hosts(as_json: JsonOpt = False) -> None:
    """List the built-in hosts and whether each is ready to load offline."""
    from .hosts import DEFAULT_HOST, builtin_hosts, is_cached, smollm2_cache_path

    rows = []
    for name in builtin_hosts():
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_HOST,
                "cached": is_cached(name),
                "source": str(smollm2_cache_path()) if name == DEFAULT_HOST else "random weights, built in memory",
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in hosts")
    for col in ("name", "cached", "source"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"] + (" (default)" if row["default"] else ""), "yes" if row["cached"] else "no", row["source"])
    console.print(table)


@app.command()
def generate(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt; repeat for a batch.")],
    host: HostOpt = "smollm2-135m-instruct",
    irm: Annotated[str, typer.Option("--irm", help="IRM or steering-vector directory, or 'none' for the bare host.")] = "none",
    strength: Annotated[float, typer.Option(help="Scale of the IRM output; 0 = bare host.")] = 1.0,
    compare: Annotated[bool, typer.Option("--compare", help="Show host-only and IRM text side by side.")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate per prompt.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for sampling (each prompt batch uses seed + offset).")] = 0,
    greedy: Annotated[bool, typer.Option("--greedy/--sample", help="Greedy decoding (default) or sampling.")] = True,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (with --sample).")] = 0.7,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Apply the host's chat template when it has one.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Attach even if the IRM was made for another host.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Generate text with the IRM on, off or scaled.

    Example: irm generate --irm runs/anger/irm -p "How do plants grow?" --compare
    """
    from .adapters import load_adapter
    from .attach import attach, check_strength
    from .generation import generate as run_generate
    from .hosts import load_host

    check_strength(strength)
    use_irm = irm.lower() != "none"
    if compare and not use_irm:
        raise IRMError("--compare needs an IRM to compare against", hint="pass --irm DIR")
    loaded_host = load_host(host, device=device)
    check_prompt_lengths(loaded_host, prompt, max_new_tokens=max_new_tokens, chat=chat)
    model = load_adapter(irm, loaded_host, check_host=not force, device=loaded_host.device) if use_irm else None
    options = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, seed=seed, chat=chat)
    outputs: dict[str, list[str]] = {}
    if compare or not use_irm:
        outputs["host"] = [g.text for g in run_generate(loaded_host, prompt, **options)]
    if model is not None:
        with attach(loaded_host, model, strength=strength):
            outputs[f"irm x{strength:g}"] = [g.text for g in run_generate(loaded_host, prompt, **options)]
    if as_json:
        print(json.dumps([{"prompt": p, **{k: v[i] for k, v in outputs.items()}} for i, p in enumerate(prompt)], indent=2))
        return
    table = Table(show_lines=True)
    table.add_column("prompt", style="bold")
    for key in outputs:
        table.add_column(key)
    for i, p in enumerate(prompt):
        table.add_row(p, *(v[i] for v in outputs.values()))
    console.print(table)


def check_prompt_lengths(loaded_host, prompts: list[str], *, max_new_tokens: int, chat: bool) -> None:
    """Refuse prompts that, with the tokens to generate, do not fit in the host's context."""
    context = loaded_host.context_length
    if not context:
        return
    from .generation import encode_prompts

    lengths = encode_prompts(loaded_host, prompts, chat=chat)["attention_mask"].sum(dim=1).tolist()
    for i, n in enumerate(lengths):
        if n + max_new_tokens > context:
            room = context - n
            raise IRMError(
                f"prompt {i + 1} is {n} tokens long; with --max-new-tokens {max_new_tokens} it needs {n + max_new_tokens} "
                f"positions, more than host {loaded_host.name}'s context of {context}",
                hint=(f"lower --max-new-tokens to {room} or " if room >= 1 else "") + "shorten the prompt",
            )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run directory for the demo.")] = Path("runs/demo"),
    max_steps: Annotated[int, typer.Option(help="Training steps (about 10 s each on a 2-core CPU).")] = 40,
) -> None:
    """The main job on the embedded SmolLM2: train a short IRM on builtin:anger, compare
    generations, evaluate, record and analyse its outputs, and write the HTML report."""
    from .demo import DemoSettings, run_demo

    page = run_demo(DemoSettings(out=out, max_steps=max_steps))
    print(f"report: {page.resolve()}")


def _register_subcommands() -> None:
    from . import cli_data, cli_report, cli_sweep, cli_train  # noqa: F401  (register their commands)
    from . import cli_reference  # noqa: F401
    from . import cli_eval, cli_steer  # noqa: F401
    from . import cli_analysis  # noqa: F401


def main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _register_subcommands()
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
