"""The stages of ``irm study``, in order; each takes the running :class:`~irm.study.runner.Study`,
skips what is already done, and returns its headline numbers and a line of text for them.

``train``      one ordinary training run per alignment x seed x layer set (the runs of an
               ``irm sweep``: a finished run is skipped, an interrupted one resumes from
               its last checkpoint);
``record``     each run's IRM output on the held-out prompts (``RUN/record``);
``analysis``   ``irm analyze --logit-lens`` of all runs: striation, dominant indices,
               consistency (also in the IRMs' own basis when they write through a
               rotation), the host's outlier dimensions, the logit lens;
``gradients``  ``irm analyze --gradients train``: the host's loss gradient at the IRM's
               injection points against each IRM;
``ablation``   each alignment's first run (first seed, first layer set): its top-k indices
               zeroed during generation against k random ones (``irm ablate``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from irm.core.io import atomic_write
from irm.errors import writing
from irm.study.config import alignment_label
from irm.study.findings import analysis_runs, spread
from irm.training.rundir import RunDir
from irm.training.sweep import train_sweep_run

if TYPE_CHECKING:
    from irm.study.runner import Study

Headline = tuple[dict[str, Any], str]


def train(study: Study) -> Headline:
    steps = study.config.steps
    pending = [r for r in study.runs if r.status != "done"]
    update = study.task(f"train {len(pending)} of {len(study.runs)} runs (steps)", len(pending) * steps)
    for n, run in enumerate(pending):
        base = n * steps
        callback = _step_callback(lambda step, base=base: update(completed=base + min(step, steps)))
        train_sweep_run(run, progress=False, callbacks=[callback])
        update(completed=base + steps)
        s = RunDir(run.run_dir).read_summary()
        study.say(
            f"  {run.name}: {s.get('global_step')} steps, test loss {_num(s.get('test_loss'))}, "
            f"{_num(s.get('real_tokens_per_second'), '.0f')} real tokens/s, {_num(s.get('wall_seconds'), '.0f')} s"
        )
    summaries = [RunDir(r.run_dir).read_summary() for r in study.runs]
    loss = spread([s.get("test_loss") for s in summaries])
    speed = spread([s.get("real_tokens_per_second") for s in summaries])
    text = (
        f"{len(study.runs)} runs ({len(pending)} trained now); test loss {_range(loss)}; "
        f"real tokens/s median {_num(speed and speed['median'], '.0f')} ({_range(speed, '.0f')})"
    )
    return {"runs": len(study.runs), "test_loss": loss, "tokens_per_second": speed}, text


def record(study: Study) -> Headline:
    from irm.analysis.pipeline import record_run
    from irm.analysis.recording import is_recording, load_recording

    pending = [r for r in study.runs if not is_recording(RunDir(r.run_dir).record)]
    update = study.task(f"record {len(pending)} runs", len(pending))
    for n, run in enumerate(pending):
        record_run(RunDir(run.run_dir), study.host(), study.analyze_options())
        update(completed=n + 1)
    tokens = sum(len(load_recording(RunDir(r.run_dir).record).tokens) for r in study.runs)
    text = f"{len(study.runs)} recordings ({study.config.record_prompts} prompts x up to {study.config.max_new_tokens} new tokens), {tokens} tokens"
    return {"recordings": len(study.runs), "tokens": tokens}, text


def analysis(study: Study) -> Headline:
    from irm.analysis.pipeline import analyze

    update = study.task("analyse stripes, indices, host outliers, logit lens", 1)
    options = study.analyze_options(logit_lens=True)
    summary = analyze([r.run_dir for r in study.runs], study.folder.analysis, options, hosts=[study.host()])
    update(completed=1)
    per_run = analysis_runs(summary, study.runs)
    parts = []
    striation = {}
    for layers in study.config.layers:
        found = [per_run[r.name]["striation"] for r in study.runs if r.settings["layers"] == layers and r.name in per_run]
        if found:
            striation[layers] = {"mean": sum(s["score"] for s in found) / len(found), "noise_level": found[0]["noise_level"]}
            parts.append(f"striation {layers}: {striation[layers]['mean']:.3f} (noise {found[0]['noise_level']:.3f})")
        own = [per_run[r.name]["irm_basis"] for r in study.runs if r.settings["layers"] == layers and r.name in per_run]
        own_scores = [o["striation"]["score"] for o in own if o.get("rotated")]
        if own_scores:
            striation[layers]["irm_basis_mean"] = sum(own_scores) / len(own_scores)
            parts.append(f"in the IRMs' own basis {striation[layers]['irm_basis_mean']:.3f}")
    firsts = [per_run[r.name]["top_k"]["indices"][0] for r in study.runs if r.name in per_run]
    top = max(set(firsts), key=lambda i: (firsts.count(i), -i))
    parts.append(f"index {top} ranked first in {firsts.count(top)} of {len(firsts)} runs")
    outliers = json.loads(
        ((study.folder.analysis / study.runs[0].name) if len(study.runs) > 1 else study.folder.analysis)
        .joinpath("host_outliers.json")
        .read_text()
    )
    residual = outliers["residual_max_abs"]
    parts.append(f"host's largest residual dimension {residual['top_k'][0]} ({_num(residual['ratio_to_median'][0], '.0f')}x the median)")
    return {"striation": striation, "most_often_first": {"index": top, "runs": firsts.count(top)}}, "; ".join(parts)


def gradients(study: Study) -> Headline:
    from irm.analysis.pipeline import analyze

    update = study.task("host loss gradients at the injection points", 1)
    options = study.analyze_options(gradients="train", host_outliers=False, token_plots=0)
    summary = analyze([r.run_dir for r in study.runs], study.folder.gradients, options, hosts=[study.host()])
    update(completed=1)
    grads = [run.get("host_gradients") or {} for run in analysis_runs(summary, study.runs).values()]
    rho = spread([g.get("spearman_with_irm_profile") for g in grads])
    cosine = spread([g.get("mean_cosine_adjacent_layers") for g in grads])
    text = f"Spearman(|gradient|, IRM profile) {_range(rho)} (mean {_num(rho and rho['mean'])}); adjacent-layer cosine mean {_num(cosine and cosine['mean'])}"
    return {"spearman_with_irm_profile": rho, "adjacent_layer_cosine": cosine}, text


def ablation(study: Study) -> Headline:
    from irm.core.network import IRM
    from irm.data.rows import read_prompts
    from irm.evaluation.ablation import ablate
    from irm.evaluation.scoring import LABELS, EmotionScorer

    c = study.config
    chosen = study.ablation_runs()
    pending = [r for r in chosen if not (study.folder.ablation / f"{r.name}.json").is_file()]
    update = study.task(f"ablate top-{c.ablation_k} vs random-{c.ablation_k} ({len(pending)} runs)", len(pending))
    if pending:
        per_run = analysis_runs(json.loads((study.folder.analysis / "summary.json").read_text(encoding="utf-8")), study.runs)
        prompts = read_prompts(c.prompts, limit=c.ablation_prompts)
        scorer = EmotionScorer()
        host = study.host()
        with writing(study.folder.ablation):
            study.folder.ablation.mkdir(exist_ok=True)
    for n, run in enumerate(pending):
        label = alignment_label(str(run.settings["data"]))
        irm = IRM.from_pretrained(RunDir(run.run_dir).irm, host, device=host.device)
        indices = per_run[run.name]["top_k"]["indices"][: c.ablation_k]
        report = ablate(
            host,
            irm,
            indices,
            prompts,
            draws=c.ablation_draws,
            seed=0,
            max_new_tokens=c.ablation_new_tokens,
            scorer=scorer,
            target=label if label in LABELS else None,
        )
        report["indices_from"] = f"the IRM's top {c.ablation_k} on the study's recording ({c.record_prompts} prompts)"
        atomic_write(study.folder.ablation / f"{run.name}.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"))
        update(completed=n + 1)
    parts = []
    found = {}
    for run in chosen:
        report = json.loads((study.folder.ablation / f"{run.name}.json").read_text(encoding="utf-8"))
        randoms = [x for x in report.get("effect_removed_random") or [] if x is not None]
        top, rnd = report.get("effect_removed_ablated"), (sum(randoms) / len(randoms) if randoms else None)
        found[run.name] = {"target": report.get("target"), "top_k_removed": top, "random_k_removed_mean": rnd}
        parts.append(f"{report.get('target')}: top-{c.ablation_k} removes {_pct(top)} of the effect, random-{c.ablation_k} {_pct(rnd)}")
    return found, "; ".join(parts)


def _step_callback(update: Callable[[int], None]) -> Any:
    """A Lightning callback that reports each optimizer step (``trainer.global_step``)."""
    import lightning.pytorch as pl

    class StepProgress(pl.Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            update(trainer.global_step)

    return StepProgress()


def _num(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def _range(stats: dict[str, Any] | None, fmt: str = ".3f") -> str:
    return f"{format(stats['min'], fmt)}-{format(stats['max'], fmt)}" if stats else "-"


def _pct(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "n/a"


STAGE_FUNCTIONS: dict[str, Callable[[Study], Headline]] = {
    "train": train,
    "record": record,
    "analysis": analysis,
    "gradients": gradients,
    "ablation": ablation,
}
