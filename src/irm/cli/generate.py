"""`irm generate`: text with the IRM on, off or scaled."""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer
from rich.table import Table

from irm.cli.options import DEFAULT_HOST, DeviceOpt, HostEditOpt, HostOpt, JsonOpt, console
from irm.errors import IRMError


def generate(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt; repeat for a batch.")],
    host: HostOpt = DEFAULT_HOST,
    host_edit: HostEditOpt = "none",
    irm: Annotated[str, typer.Option("--irm", help="IRM or steering-vector directory, or 'none' for the bare host.")] = "none",
    strength: Annotated[float, typer.Option(help="Scale of the IRM output; 0 = bare host.")] = 1.0,
    compare: Annotated[bool, typer.Option("--compare", help="Show host-only and IRM text side by side.")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate per prompt.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for sampling (each prompt batch uses seed + offset).")] = 0,
    greedy: Annotated[bool, typer.Option("--greedy/--sample", help="Greedy decoding (default) or sampling.")] = True,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (with --sample); 0 means greedy.")] = 0.7,
    top_p: Annotated[
        float, typer.Option("--top-p", help="Nucleus sampling: keep the most likely tokens up to this probability (with --sample).")
    ] = 0.9,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Apply the host's chat template when it has one.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Attach even if the IRM was made for another host.")] = False,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Generate text with the IRM on, off or scaled.

    Example: irm generate --irm runs/anger/irm -p "How do plants grow?" --compare
    """
    from irm.core.adapters import load_adapter
    from irm.core.attach import attach, check_strength
    from irm.hosts.generation import generate as run_generate
    from irm.hosts.loading import load_host

    check_strength(strength)
    check_texts(prompt, "--prompt")
    greedy = check_sampling(temperature, top_p) or greedy  # checked even when greedy
    use_irm = irm.lower() != "none"
    if compare and not use_irm:
        raise IRMError("--compare needs an IRM to compare against", hint="pass --irm DIR")
    loaded_host = load_host(host, device=device, edit=host_edit)
    check_prompt_lengths(loaded_host, prompt, max_new_tokens=max_new_tokens, chat=chat)
    model = load_adapter(irm, loaded_host, check_host=not force, device=loaded_host.device) if use_irm else None
    options = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, top_p=top_p, seed=seed, chat=chat)
    outputs: dict[str, list[str]] = {}
    if compare or not use_irm:
        outputs["host"] = [g.text for g in run_generate(loaded_host, prompt, **options)]
    if model is not None:
        with attach(loaded_host, model, strength=strength):
            outputs[f"irm x{strength:g}"] = [g.text for g in run_generate(loaded_host, prompt, **options)]
    prompt_format = describe_prompt_format(loaded_host, chat=chat)
    if as_json:
        rows = [{"prompt": p, "prompt_format": prompt_format, **{k: v[i] for k, v in outputs.items()}} for i, p in enumerate(prompt)]
        print(json.dumps(rows, indent=2))
        return
    table = Table(show_lines=True, caption=f"prompt format: {prompt_format}")
    table.add_column("prompt", style="bold")
    for key in outputs:
        table.add_column(key)
    for i, p in enumerate(prompt):
        table.add_row(p, *(v[i] for v in outputs.values()))
    console.print(table)


def describe_prompt_format(loaded_host, *, chat: bool) -> str:
    """Which of the two prompt formats (:mod:`irm.data.prompts`) generation used, and why."""
    from irm.data.prompts import uses_chat_template

    if uses_chat_template(loaded_host.require_tokenizer(), chat=chat):
        return "chat template"
    why = "--no-chat" if loaded_host.has_chat_template else f"{loaded_host.name} has no chat template"
    return f"Question:/Answer: ({why})"


def check_sampling(temperature: float, top_p: float) -> bool:
    """Refuse sampling settings that are not numbers in range; True when they mean greedy
    decoding (``--temperature 0``, as in OpenAI's API)."""
    if not math.isfinite(temperature) or temperature < 0:
        raise IRMError(f"--temperature {temperature}: must be a number >= 0", hint="e.g. --temperature 0.7 (0 means greedy)")
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise IRMError(f"--top-p {top_p}: must be a number above 0 and at most 1", hint="e.g. --top-p 0.9 (1 keeps every token)")
    return temperature == 0


def check_texts(texts: list[str], what: str, *, allow_empty: bool = False) -> None:
    """Refuse texts that are not valid Unicode (a lone surrogate, as a shell passes bytes
    that are not UTF-8) and, unless ``allow_empty``, texts that are empty or only whitespace."""
    for i, text in enumerate(texts, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise IRMError(
                f"{what} {i} is not valid text: character {exc.start + 1} is a lone surrogate ({text[exc.start]!a})",
                hint="pass UTF-8 text (check the terminal's or the file's encoding)",
            ) from None
        if not allow_empty and not text.strip():
            raise IRMError(f"{what} {i} is empty" + (" (only whitespace)" if text else ""), hint="give every prompt some text")


def check_prompt_lengths(loaded_host, prompts: list[str], *, max_new_tokens: int, chat: bool) -> None:
    """Refuse prompts that, with the tokens to generate, do not fit in the host's context."""
    context = loaded_host.context_length
    if not context:
        return
    from irm.hosts.generation import encode_prompts

    lengths = encode_prompts(loaded_host, prompts, chat=chat)["attention_mask"].sum(dim=1).tolist()
    for i, n in enumerate(lengths):
        if n + max_new_tokens > context:
            room = context - n
            raise IRMError(
                f"prompt {i + 1} is {n} tokens long; with --max-new-tokens {max_new_tokens} it needs {n + max_new_tokens} "
                f"positions, more than host {loaded_host.name}'s context of {context}",
                hint=(f"lower --max-new-tokens to {room} or " if room >= 1 else "") + "shorten the prompt",
            )
