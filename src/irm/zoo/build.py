"""Build a zoo folder: the shared corpus, then each variant trained, saved as an ordinary
transformers model folder (with its tokenizer) and measured.

Layout of a zoo folder (``$IRM_CACHE/zoo`` by default)::

    zoo.json                      the recipe every model in the folder was trained with
    corpus/                       tokenizer and token streams, shared by all variants
    zoo-rope-rmsnorm-tied/        one finished model: config.json, model.safetensors,
                                  tokenizer files, zoo_model.json (perplexity, curves,
                                  massive-activation dims)
    .zoo-learned-rmsnorm-tied.partial/   a model being trained (its checkpoint)

A model folder appears under its name only when it is complete (renamed from its partial
folder in one step); a killed build resumes from the checkpoints, and a finished model is
never trained again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irm.core.io import atomic_write, check_output_dir, remove_tree
from irm.errors import IRMError
from irm.zoo.corpus import Corpus, build_corpus
from irm.zoo.hosts import MODEL_REPORT, default_zoo_dir
from irm.zoo.train import final_train_loss, perplexity, train_variant
from irm.zoo.variants import VARIANTS, Recipe, Variant, find_variant

ZOO_FORMAT = "irm-zoo/1"
ZOO_MANIFEST = "zoo.json"
OUTLIER_TOP_K = 5
OUTLIER_PROMPTS = "builtin:prompts"
OUTLIER_PROMPT_LIMIT = 16
"""The texts and count ``irm analyze --host-outliers`` measures a host's outlier dims on."""


def resolve_zoo_dir(out: str | Path | None) -> Path:
    """``None`` or ``"cache"``: the cached zoo; anything else: that folder."""
    return default_zoo_dir() if out in (None, "cache") else Path(out).expanduser()


def is_zoo_folder(path: Path) -> bool:
    manifest = path / ZOO_MANIFEST
    try:
        return manifest.is_file() and json.loads(manifest.read_text()).get("format") == ZOO_FORMAT
    except (OSError, ValueError):
        return False


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / ZOO_MANIFEST).read_text())  # type: ignore[no-any-return]


def partial_folder(zoo: Path, variant: Variant) -> Path:
    return zoo / f".{variant.name}.partial"


def model_status(zoo: Path, variant: Variant) -> str:
    """``built``, ``partial`` (a checkpoint to resume) or ``missing``."""
    if (zoo / variant.name / MODEL_REPORT).is_file():
        return "built"
    if (partial_folder(zoo, variant) / "checkpoint.pt").is_file():
        return "partial"
    return "missing"


@dataclass
class BuildPlan:
    zoo: Path
    recipe: Recipe
    variants: list[Variant]
    status: dict[str, str]

    @property
    def steps_to_train(self) -> int:
        return sum(self.recipe.steps for v in self.variants if self.status[v.name] != "built")


def plan_build(out: str | Path | None, names: Sequence[str] | None, recipe: Recipe, *, overwrite: bool) -> BuildPlan:
    """Check, before any work, where the zoo goes and what is left to build: a new or empty
    folder, or a zoo folder built with this same recipe (finished models are kept, partial
    ones resume). A zoo folder of another recipe is replaced only with ``overwrite``."""
    zoo = resolve_zoo_dir(out)
    variants = [find_variant(n) for n in names] if names else list(VARIANTS)
    variants = list(dict.fromkeys(variants))
    if is_zoo_folder(zoo) and not zoo.is_symlink():
        built_with = read_manifest(zoo).get("recipe")
        if built_with != recipe.to_dict():
            if not overwrite:
                raise IRMError(
                    f"{zoo} holds a zoo built with another recipe ({built_with.get('name') if isinstance(built_with, dict) else '?'}; "
                    f"this build asks for {recipe.name})",
                    hint="pass --overwrite to rebuild that zoo with this recipe, or --out NEW_FOLDER for a separate zoo",
                )
            check_output_dir(zoo, overwrite=True, is_ours=is_zoo_folder, kind="a zoo folder")
            remove_tree(zoo)
    else:
        check_output_dir(zoo, overwrite=overwrite, is_ours=is_zoo_folder, kind="a zoo folder")
    return BuildPlan(zoo, recipe, variants, {v.name: model_status(zoo, v) for v in variants})


class BuildProgress:
    """What a build reports; the CLI draws it, the default says nothing."""

    def stage(self, text: str) -> None: ...

    def start_model(self, variant: Variant, done_steps: int) -> None: ...

    def step(self, variant: Variant, step: int, loss: float) -> None: ...

    def finish_model(self, variant: Variant, report: dict[str, Any]) -> None: ...


def build_zoo(plan: BuildPlan, progress: BuildProgress | None = None) -> list[dict[str, Any]]:
    """Build every planned variant that is not built yet; return every planned model's report."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # saving and loading each model would draw its own bars
    try:
        return _build_all(plan, progress or BuildProgress())
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _build_all(plan: BuildPlan, progress: BuildProgress) -> list[dict[str, Any]]:
    zoo, recipe = plan.zoo, plan.recipe
    zoo.mkdir(parents=True, exist_ok=True)
    if not is_zoo_folder(zoo):
        atomic_write(zoo / ZOO_MANIFEST, _json({"format": ZOO_FORMAT, "recipe": recipe.to_dict()}))
    reports = []
    corpus: Corpus | None = None
    for variant in plan.variants:
        final = zoo / variant.name
        if not (final / MODEL_REPORT).is_file():
            if corpus is None:
                progress.stage("corpus and tokenizer (cached after the first build)")
                corpus = build_corpus(recipe.corpus, zoo / "corpus", progress.stage)
            _build_model(zoo, recipe, variant, corpus, progress)
        report = json.loads((final / MODEL_REPORT).read_text())
        progress.finish_model(variant, report)
        reports.append(report)
    return reports


def _build_model(zoo: Path, recipe: Recipe, variant: Variant, corpus: Corpus, progress: BuildProgress) -> None:
    work = partial_folder(zoo, variant)
    work.mkdir(exist_ok=True)
    checkpoint = work / "checkpoint.pt"
    done = 0
    if checkpoint.is_file():
        import torch

        done = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["state"]["step"])
    progress.start_model(variant, done)
    model, state = train_variant(recipe, variant, corpus, work, lambda step, loss: progress.step(variant, step, loss))
    progress.stage(f"{variant.name}: validation perplexity and massive activations")
    val = perplexity(model, corpus.val, recipe.seq_len)
    model.save_pretrained(str(work))
    corpus.tokenizer.save_pretrained(str(work))
    report: dict[str, Any] = {
        "name": variant.name,
        "variant": variant.key,
        "change": variant.change,
        "switches": variant.switches(),
        "recipe": recipe.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": state.step,
        "tokens_seen": state.step * recipe.batch_size * recipe.seq_len,
        "train_seconds": round(state.seconds, 1),
        "final_train_loss": final_train_loss(state),
        "val": {"loss": val.loss, "perplexity": val.value, "perplexity_ci95": list(val.ci95), "tokens": val.tokens},
        "massive_activations": massive_activations(work, variant.name),
        "corpus": corpus.info,
        "curve": [list(row) for row in state.curve],
        "val_curve": [list(row) for row in state.val_curve],
    }
    checkpoint.unlink(missing_ok=True)
    atomic_write(work / MODEL_REPORT, _json(report))
    final = zoo / variant.name
    if final.exists():
        raise IRMError(f"{final} exists but is not a finished zoo model", hint=f"move {final} away and build again")
    os.replace(work, final)


def massive_activations(folder: Path, name: str) -> dict[str, Any]:
    """The host's outlier dims as ``irm analyze --host-outliers`` measures them
    (:func:`irm.analysis.outliers.host_outlier_dims`, on the same prompts)."""
    from irm.analysis.outliers import host_outlier_dims
    from irm.data.rows import read_prompts
    from irm.hosts.loading import load_host

    host = load_host(str(folder), device="cpu", dtype="float32")
    host.name = name
    outliers = host_outlier_dims(host, read_prompts(OUTLIER_PROMPTS, limit=OUTLIER_PROMPT_LIMIT))
    return outliers.to_dict(OUTLIER_TOP_K)


def list_zoo(out: str | Path | None) -> list[dict[str, Any]]:
    """One row per variant: its status in the zoo folder and, when built, its numbers."""
    zoo = resolve_zoo_dir(out)
    recipe_name = read_manifest(zoo)["recipe"]["name"] if is_zoo_folder(zoo) else None
    rows = []
    for variant in VARIANTS:
        status = model_status(zoo, variant)
        row: dict[str, Any] = {"name": variant.name, "variant": variant.key, "change": variant.change, "folder": str(zoo / variant.name)}
        row.update(status=status, recipe=recipe_name)
        if status == "built":
            report = json.loads((zoo / variant.name / MODEL_REPORT).read_text())
            massive = report["massive_activations"]["residual_max_abs"]
            row.update(
                recipe=report["recipe"],
                parameters=report["parameters"],
                val_perplexity=report["val"]["perplexity"],
                val_perplexity_ci95=report["val"]["perplexity_ci95"],
                train_seconds=report["train_seconds"],
                massive_dims=massive["top_k"],
                massive_ratio=massive["ratio_to_median"],
            )
        rows.append(row)
    return rows


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()
