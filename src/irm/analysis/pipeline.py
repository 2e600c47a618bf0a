"""``irm analyze``: recordings (or run directories) in, heatmaps and numbers out.

For one input, ``OUT/`` gets ``summary.json``, ``heatmap_mean.png`` (mean ``|output|``),
``heatmap_token_P_T.png`` (signed output of single tokens), ``animation.gif`` (one frame per
token), ``per_token.jsonl``, ``mean_abs_map.npy`` and ``host_outliers.json``. For several
inputs each gets its own ``OUT/LABEL/`` and ``OUT/`` gets ``summary.json`` (all runs) and
``consistency.json`` (agreement of the dominant indices, per host, in the host's basis and
in the IRMs' own: :mod:`irm.analysis.bases`). An IRM with an output rotation also gets
``heatmap_mean_irm_basis.png`` and ``mean_abs_map_irm_basis.npy``. With ``logit_lens`` set,
each input gets ``logit_lens.json`` (:mod:`irm.analysis.logit_lens`). With ``gradients`` set,
each input also gets ``host_gradients.json``: the host's training-loss gradient at the IRM's
injection points (:mod:`irm.gradients`), how alike it is across layers, and whether its
largest indices are the IRM's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from irm.analysis.bases import output_rotation_of, to_irm_basis
from irm.analysis.gradients import ResidualGradients, residual_gradients
from irm.analysis.heatmaps import save_animation, save_heatmap
from irm.analysis.outliers import HostOutliers, host_outlier_dims
from irm.analysis.recording import (
    Recording,
    is_recording,
    load_recording,
    record,
    remove_stale_staging,
    save_recording,
    staging_folder,
)
from irm.analysis.statistics import (
    coincidence,
    consistency,
    describe,
    index_profile,
    mean_abs_map,
    per_token_stats,
    spearman,
    striation,
    top_k,
)
from irm.core.io import check_output_dir
from irm.data.rows import read_prompts, read_rows
from irm.errors import IRMError, writing
from irm.hosts.loading import Host, load_host
from irm.training.rundir import RunDir


@dataclass
class AnalyzeOptions:
    k: int = 10
    token_plots: int = 4
    frames: int = 24
    host_outliers: bool = True
    neutral: str = "builtin:prompts"
    neutral_limit: int = 16
    prompts: str = "builtin:prompts"
    prompt_limit: int | None = 16
    max_new_tokens: int = 32
    device: str = "auto"
    gradients: str = "none"
    """none, train (each IRM's own training data) or question/answer data (file or builtin:NAME)."""
    gradient_rows: int = 32
    gradient_max_length: int = 64
    logit_lens: bool = False
    """Write each input's logit lens (needs the host; the direct effect needs a run directory)."""
    lens_tokens: int = 10


class _Hosts:
    """Load each host once, and measure its outlier dimensions once."""

    def __init__(self, options: AnalyzeOptions, loaded: Sequence[Host] = ()) -> None:
        self.options = options
        self.hosts: dict[tuple[str, str], Host] = {(host.name, host.edit): host for host in loaded}
        self.outliers: dict[tuple[str, str], HostOutliers] = {}
        self.gradients: dict[tuple[str, str, str, tuple[int, ...], str], ResidualGradients] = {}

    def host(self, name: str, edit: str = "") -> Host:
        """The host of that name, with that edit (:mod:`irm.hosts.interventions`)."""
        if (name, edit) not in self.hosts:
            self.hosts[name, edit] = load_host(name, device=self.options.device, edit=edit or "none")
        return self.hosts[name, edit]

    def outlier_dims(self, name: str, edit: str = "") -> HostOutliers:
        if (name, edit) not in self.outliers:
            texts = read_prompts(self.options.neutral, limit=self.options.neutral_limit)
            self.outliers[name, edit] = host_outlier_dims(self.host(name, edit), texts)
        return self.outliers[name, edit]

    def residual_gradients(self, name: str, edit: str, data: str, layers: Sequence[int], site: str) -> ResidualGradients:
        key = (name, edit, data, tuple(layers), site)
        if key not in self.gradients:
            rows = read_rows(data)
            picked = np.random.default_rng(0).permutation(len(rows))[: self.options.gradient_rows]
            self.gradients[key] = residual_gradients(
                self.host(name, edit), [rows[i] for i in sorted(picked)], layers, site=site, max_length=self.options.gradient_max_length
            )
        return self.gradients[key]


def gradient_data(rec: Recording, choice: str) -> str | None:
    """The data whose gradients to compare a recording's IRM with, or None."""
    if choice == "none":
        return None
    if choice != "train":
        return choice
    data = rec.meta.get("irm_config", {}).get("extra", {}).get("data")
    if not data:
        raise IRMError(
            "--gradients train: this recording's IRM does not say what it was trained on",
            hint="name the data instead, e.g. --gradients builtin:anger",
        )
    return str(data)


def compare_gradients(grads: ResidualGradients, profile: np.ndarray, irm_top: Sequence[int], data: str, k: int) -> dict[str, Any]:
    """The gradient map's own numbers, and how its per-index magnitude matches the IRM's."""
    grad_profile = index_profile(np.abs(grads.gradients).T)
    return {
        "data": data,
        **grads.summary(k),
        "spearman_with_irm_profile": spearman(profile, grad_profile),
        "coincidence_with_irm": coincidence(irm_top, grad_profile, k),
    }


def open_input(path: str | Path, hosts: _Hosts) -> Recording:
    """A recording directory, or a run directory (``RUN/irm``): its ``RUN/record`` if
    present, else a new recording there on the analysis prompts."""
    path = Path(path)
    if is_recording(path):
        return load_recording(path)
    run = RunDir(path)
    if run.irm.is_dir():
        if is_recording(run.record):
            return load_recording(run.record)
        from irm.core.config import IRMConfig

        identity = IRMConfig.load(run.irm).host
        return record_run(run, hosts.host(identity.name, identity.edit), hosts.options)
    raise IRMError(
        f"{path} is neither a recording nor a run directory",
        hint="pass a directory written by `irm record`, or a run directory of `irm train` (with RUN/irm)",
    )


def record_run(run: RunDir, host: Host, options: AnalyzeOptions) -> Recording:
    """Record a run's IRM on the analysis prompts into ``RUN/record`` (replacing a recording
    there, written whole or not at all) and open it."""
    from irm.core.network import IRM

    irm = IRM.from_pretrained(run.irm, host, device=host.device)
    prompts = read_prompts(options.prompts, limit=options.prompt_limit)
    rec = record(host, irm, prompts, max_new_tokens=options.max_new_tokens)
    save_recording(rec, run.record, overwrite=True)
    return load_recording(run.record)


def _label(path: Path) -> str:
    return path.parent.name if path.name == "record" else path.name


def _token_title(rec: Recording, row: int) -> str:
    t = rec.tokens[row]
    return f"prompt {t.prompt}, position {t.position} ({t.kind}): {t.token!r}"


def _plot_rows(rec: Recording, limit: int) -> list[int]:
    """Rows of the first prompt's generated tokens (its prompt tokens if none), up to ``limit``."""
    start, end = int(rec.offsets[0]), int(rec.offsets[1])
    generated = [r for r in range(start, end) if rec.tokens[r].kind == "generated"]
    return (generated or list(range(start, end)))[:limit]


def analyze_recording(
    rec: Recording,
    out: Path,
    options: AnalyzeOptions,
    outliers: HostOutliers | None,
    gradients: tuple[str, ResidualGradients] | None = None,
    shown_as: Path | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Write one recording's files to ``out``; return its summary and index profiles (in
    the host's basis and the IRM's own). The summary names the files as under ``shown_as``
    (where they will be moved), if given."""
    out.mkdir(parents=True, exist_ok=True)
    layers = rec.layers
    mean_map = mean_abs_map(rec.outputs)
    np.save(out / "mean_abs_map.npy", mean_map)
    profile = index_profile(mean_map)
    top = top_k(profile, options.k)
    stats = per_token_stats(rec.outputs)
    with open(out / "per_token.jsonl", "w", encoding="utf-8") as fh:
        for i, tok in enumerate(rec.tokens):
            fh.write(json.dumps({**asdict(tok), **{k: round(float(v[i]), 6) for k, v in stats.items()}}, ensure_ascii=False) + "\n")
    files = [
        save_heatmap(
            mean_map,
            layers,
            out / "heatmap_mean.png",
            title=f"mean |IRM output| over {len(rec.tokens)} tokens ({rec.meta['host']['name']})",
        )
    ]
    rows = _plot_rows(rec, max(options.token_plots, options.frames))
    for row in rows[: options.token_plots]:
        t = rec.tokens[row]
        files.append(
            save_heatmap(
                np.asarray(rec.outputs[row], dtype=np.float32),
                layers,
                out / f"heatmap_token_{t.prompt}_{t.position}.png",
                title="IRM output, " + _token_title(rec, row),
                signed=True,
                label="IRM output",
            )
        )
    frame_rows = rows[: options.frames]
    if frame_rows:
        frames = np.asarray(rec.outputs[frame_rows], dtype=np.float32)
        files.append(save_animation(frames, layers, [_token_title(rec, r) for r in frame_rows], out / "animation.gif"))
    summary: dict[str, Any] = {
        "host": rec.meta["host"]["name"],
        "hidden_size": rec.hidden_size,
        "layers": layers,
        "prompts": len(rec.prompts),
        "tokens": len(rec.tokens),
        "striation": asdict(striation(mean_map)),
        "striation_per_token": describe(stats["striation"]),
        "top_k": top.to_dict(),
        "sparsity": {"hoyer": describe(stats["hoyer"]), "top1pct_share": describe(stats["top1pct_share"])},
    }
    rotation = output_rotation_of(rec.meta.get("irm_config", {}))
    profiles = {"host": profile, "irm": profile}
    if rotation is None:
        summary["irm_basis"] = {"rotated": False, "note": "the IRM writes in the host's basis: the same numbers"}
    else:
        own = to_irm_basis(rec.outputs, rotation)
        own_map = mean_abs_map(own)
        np.save(out / "mean_abs_map_irm_basis.npy", own_map)
        profiles["irm"] = index_profile(own_map)
        files.append(
            save_heatmap(own_map, layers, out / "heatmap_mean_irm_basis.png", title="mean |IRM output| in the IRM's own basis (before R)")
        )
        summary["irm_basis"] = {
            "rotated": True,
            "output_rotation": rec.meta["irm_config"]["output_rotation"],
            "striation": asdict(striation(own_map)),
            "striation_per_token": describe(per_token_stats(own)["striation"]),
            "top_k": top_k(profiles["irm"], options.k).to_dict(),
        }
    if outliers is not None:
        (out / "host_outliers.json").write_text(json.dumps(outliers.to_dict(options.k), indent=2) + "\n", encoding="utf-8")
        files.append(out / "host_outliers.json")
        summary["coincidence_with_host"] = {
            name: coincidence(top.indices, signal, options.k) for name, signal in outliers.signals().items()
        }
    if gradients is not None:
        data, grads = gradients
        summary["host_gradients"] = compare_gradients(grads, profile, top.indices, data, options.k)
        (out / "host_gradients.json").write_text(json.dumps(summary["host_gradients"], indent=2) + "\n", encoding="utf-8")
        files.append(out / "host_gradients.json")
    summary["files"] = [str(f if shown_as is None else shown_as / Path(f).relative_to(out)) for f in files]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary, profiles


def check_analysis_out(out: Path) -> Path:
    """Check, before any work, that ``--out`` can take an analysis: a folder (new, or
    existing and writable: its files of the same names are replaced, others kept), never a
    file or a link. Temporary folders of a killed analysis beside it are deleted."""
    remove_stale_staging(out)
    if out.is_dir() and not out.is_symlink():
        if not os.access(out, os.W_OK | os.X_OK):
            raise IRMError(f"cannot write --out {out}: the folder is not writable", hint=f"make {out} writable or choose another --out")
        return out
    return check_output_dir(out, overwrite=False, is_ours=lambda _: False, kind="an analysis")


def move_into(staging: Path, out: Path) -> None:
    """Move every file of ``staging`` to the same place under ``out`` (each by one rename)."""
    for path in sorted(staging.rglob("*")):
        target = out / path.relative_to(staging)
        with writing(target):
            if path.is_dir():
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    raise IRMError(
                        f"{target} is in the way of the analysis folder {path.name}", hint="move it away or choose another --out"
                    )
                target.mkdir(exist_ok=True)
            else:
                if target.is_symlink() or target.is_dir():
                    raise IRMError(f"{target} is in the way of the analysis file {path.name}", hint="move it away or choose another --out")
                os.replace(path, target)


def analyze(
    inputs: Sequence[str | Path], out: str | Path, options: AnalyzeOptions | None = None, *, hosts: Sequence[Host] = ()
) -> dict[str, Any]:
    """Analyse every input; with several, also compare their dominant indices. Every file is
    first written to a folder beside ``out`` and moved into ``out`` only when all are
    written: a full disk or a crash leaves ``out`` as it was. ``hosts`` already loaded are
    used instead of loading them again (by name)."""
    options = options or AnalyzeOptions()
    if not inputs:
        raise IRMError("nothing to analyse", hint="pass one or more recording or run directories")
    out = check_analysis_out(Path(out))
    loaded = _Hosts(options, hosts)
    recordings = [open_input(path, loaded) for path in inputs]  # damaged inputs are refused before anything is written
    created = not out.exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out)
    try:
        with writing(out):  # a full disk (np.save, savefig ...) becomes a clear error
            result = _analyze_into(inputs, recordings, staging, out, loaded)
        move_into(staging, out)
    except BaseException:
        if created and not any(f.is_file() for f in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _analyze_into(inputs: Sequence[str | Path], recordings: Sequence[Recording], out: Path, shown: Path, hosts: _Hosts) -> dict[str, Any]:
    options = hosts.options
    labels: list[str] = []
    summaries: list[dict[str, Any]] = []
    profiles: dict[str, dict[str, dict[str, np.ndarray]]] = {"host": {}, "irm": {}}
    for path, rec in zip(inputs, recordings):
        label = _label(Path(path))
        label = label if label not in labels else f"{label}-{len(labels)}"
        labels.append(label)
        host_name, edit = rec.meta["host"]["name"], rec.meta["host"].get("edit", "")
        outliers = hosts.outlier_dims(host_name, edit) if options.host_outliers else None
        data = gradient_data(rec, options.gradients)
        site = rec.meta.get("irm_config", {}).get("site", "resid_mid")
        grads = (data, hosts.residual_gradients(host_name, edit, data, rec.layers, site)) if data is not None else None
        where, shown_where = (out, shown) if len(inputs) == 1 else (out / label, shown / label)
        summary, profile = analyze_recording(rec, where, options, outliers, grads, shown_as=shown_where)
        if options.logit_lens:
            summary = _add_logit_lens(summary, rec, Path(path), where, shown_where, hosts)
        summaries.append({"input": str(path), "label": label, **summary})
        group = f"{host_name} (hidden {rec.hidden_size})"
        for basis in ("host", "irm"):
            profiles[basis].setdefault(group, {})[label] = profile[basis]
    if len(inputs) == 1:
        return summaries[0]
    report = {host: consistency(runs, options.k) for host, runs in profiles["host"].items()}
    report_irm = {host: consistency(runs, options.k) for host, runs in profiles["irm"].items()}
    (out / "consistency.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "consistency_irm_basis.json").write_text(json.dumps(report_irm, indent=2) + "\n", encoding="utf-8")
    combined = {"runs": summaries, "consistency": report, "consistency_irm_basis": report_irm}
    (out / "summary.json").write_text(json.dumps(combined, indent=2) + "\n", encoding="utf-8")
    return combined


def _add_logit_lens(summary: dict[str, Any], rec: Recording, path: Path, out: Path, shown: Path, hosts: _Hosts) -> dict[str, Any]:
    """Write ``logit_lens.json`` (:mod:`irm.analysis.logit_lens`) beside the summary and add
    its short form to it: the layer means' and the top indices' lens, and, for a run
    directory (whose IRM can be run again), the direct effect of the last k layers."""
    from irm.analysis.logit_lens import direct_effect, index_lens, layer_mean_lens

    options = hosts.options
    host = hosts.host(rec.meta["host"]["name"], rec.meta["host"].get("edit", ""))
    lens: dict[str, Any] = {
        "layer_means": layer_mean_lens(host, rec.outputs, rec.layers, options.lens_tokens),
        "top_indices": index_lens(host, rec.outputs, summary["top_k"]["indices"], options.lens_tokens),
    }
    run = RunDir(path)
    if run.irm.is_dir():
        from irm.core.network import IRM

        irm = IRM.from_pretrained(run.irm, host, device=host.device)
        prompts = read_prompts(options.prompts, limit=options.prompt_limit)
        lens["direct_effect"] = direct_effect(host, irm, prompts, k=options.lens_tokens)
    (out / "logit_lens.json").write_text(json.dumps(lens, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    words = {
        "top_indices": {row["index"]: [t["token"] for t in row["promoted"][:5]] for row in lens["top_indices"]},
        "last_layer_mean": [t["token"] for t in lens["layer_means"][-1]["promoted"][:5]],
    }
    if "direct_effect" in lens:
        words["direct_effect_share"] = {row["last_k"]: round(row["share_of_full_change"], 4) for row in lens["direct_effect"]["depths"]}
    summary = {**summary, "logit_lens": words, "files": [*summary["files"], str(shown / "logit_lens.json")]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
