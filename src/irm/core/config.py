"""`IRMSpec`, `IRMConfig`: the IRM's shape and placement (defined and checked once), and
everything needed to rebuild an IRM and to check it fits a host."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irm.core.sites import SITES
from irm.errors import IRMError

CONFIG_NAME = "irm_config.json"
FORMAT_VERSION = 1
MAX_WIDTH_MULTIPLIER = 1024.0
"""Widths beyond ``1024 * hidden`` are refused: they come from typos, not experiments."""
MAX_JSON_BYTES = 1 << 20
"""An ``irm_config.json`` is a few hundred bytes; anything over 1 MiB is not one."""
LAYERS_HELP = "Injected layers: all, 0-7, 2,3 ... [all]."
OUTPUT_INITS = ("zeros", "default")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _seed(value: object) -> bool:
    return value is None or (_whole(value) and 0 <= value < 2**63)  # type: ignore[operator]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class IRMSpec:
    """The IRM's shape and placement, apart from the injected layers (which need a host to
    resolve). The defaults are the paper's IRM: input = layer 0's ``resid_mid``, four
    hidden ``Linear`` layers of width ``3 * hidden`` with ReLU, and an output of one
    ``hidden``-sized vector per injected layer, added at ``resid_mid``.

    :class:`IRMConfig` (``irm_config.json``), ``IRM.for_host`` and
    :class:`irm.training.config.TrainConfig` all take these fields from here; the
    ``irm train`` flags take their help text from :func:`spec_help`.
    """

    site: str = field(default="resid_mid", metadata=_help("resid_mid (paper), resid_pre or resid_post."))
    input_layer: int = field(default=0, metadata=_help("Layer whose hidden state the IRM reads [0]."))
    input_site: str = field(default="resid_mid", metadata=_help("Site of that layer the IRM reads [resid_mid]."))
    depth: int = field(default=4, metadata=_help("Hidden layers of the IRM [4]."))
    """Number of hidden layers; the network has ``depth + 1`` linears (paper: 4 -> 5)."""
    width_multiplier: float = field(default=3.0, metadata=_help("Hidden width as a multiple of the host's [3]."))
    rank: int | None = field(default=None, metadata=_help("Low-rank IRM: factorise the output layer through this rank."))
    """If set, the output linear is factorised through a bottleneck of this rank."""
    output_init: str = field(
        default="zeros", metadata=_help("zeros (the IRM starts as the identity on the host) or default (PyTorch's init).")
    )
    """``zeros``: the IRM starts as the identity on the host; ``default``: PyTorch's init."""
    output_rotation: int | None = field(
        default=None,
        metadata=_help(
            "Basis test: the IRM writes its output in a fixed random orthogonal basis per injected layer, "
            "drawn from this seed; the host receives R @ out (see irm.core.rotation)."
        ),
    )
    """Seed of the fixed orthogonal matrices ``R_l`` (:mod:`irm.core.rotation`); None: no rotation."""
    input_rotation: int | None = field(
        default=None, metadata=_help("Basis test: the IRM reads Q @ h, Q a fixed random orthogonal matrix from this seed.")
    )
    """Seed of the fixed orthogonal matrix ``Q`` applied to the IRM's input; None: none."""

    def __post_init__(self) -> None:
        for name, ok, rule, _ in self.spec_checks():
            if not ok:
                raise IRMError(f"{name} {rule}, got {getattr(self, name)!r}", hint=f"fix {name}, or leave it out for the paper's default")

    def spec_checks(self) -> list[tuple[str, bool, str, str]]:
        """``(field, ok, rule, example)`` for every spec field: the one place they are checked."""
        sites = ", ".join(SITES)
        return [
            ("site", isinstance(self.site, str) and self.site in SITES, "must be one of " + sites, "resid_mid"),
            ("input_site", isinstance(self.input_site, str) and self.input_site in SITES, "must be one of " + sites, "resid_mid"),
            ("input_layer", _whole(self.input_layer) and self.input_layer >= 0, "must be a whole number >= 0", "0"),
            ("depth", _whole(self.depth) and self.depth >= 0, "must be a whole number >= 0", "4"),
            (
                "width_multiplier",
                _number(self.width_multiplier) and 0 < self.width_multiplier <= MAX_WIDTH_MULTIPLIER,
                f"must be a positive number up to {MAX_WIDTH_MULTIPLIER:g}",
                "3",
            ),
            ("rank", self.rank is None or (_whole(self.rank) and self.rank >= 1), "must be a whole number >= 1", "64"),
            ("output_init", isinstance(self.output_init, str) and self.output_init in OUTPUT_INITS, "must be zeros or default", "zeros"),
            ("output_rotation", _seed(self.output_rotation), "must be a whole number >= 0 (a seed)", "1"),
            ("input_rotation", _seed(self.input_rotation), "must be a whole number >= 0 (a seed)", "1"),
        ]

    def irm_spec(self) -> IRMSpec:
        """The spec fields alone (for a subclass such as ``TrainConfig`` or ``IRMConfig``)."""
        return IRMSpec(**spec_fields(self))


SPEC_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(IRMSpec))
ABSENT_WHEN_DEFAULT: dict[str, Any] = {"output_rotation": None, "input_rotation": None, "rotation_sha256": ""}
"""Fields added after the first file format: left out of the flat files while at their
default, so that files written without them stay byte for byte the same."""


def without_defaults(data: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``data`` less the keys of ``defaults`` that hold their default value."""
    return {key: value for key, value in data.items() if key not in defaults or value != defaults[key]}


def spec_fields(spec: IRMSpec) -> dict[str, Any]:
    """The spec's fields as keywords (``IRMConfig(host=..., layers=..., **spec_fields(spec))``)."""
    return {name: getattr(spec, name) for name in SPEC_FIELDS}


def spec_help(name: str) -> str:
    """The help text of an IRM spec field (``"layers"`` included), for CLI flags."""
    if name == "layers":
        return LAYERS_HELP
    for f in dataclasses.fields(IRMSpec):
        if f.name == name:
            return str(f.metadata["help"])
    raise KeyError(name)


def spec_ordered(data: dict[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    """``data`` with the keys ``first`` moved in front: the key order the flat files
    (``irm_config.json``, a run's ``config.yaml``) were written in before the spec fields
    moved to :class:`IRMSpec`."""
    head = {key: data[key] for key in first}
    return {**head, **{key: value for key, value in data.items() if key not in head}}


@dataclass
class HostIdentity:
    """Identity of the host an IRM was made for."""

    name: str
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    fingerprint: str = ""
    """Hash of a slice of the input embedding (see :func:`irm.hosts.loading.host_fingerprint`)."""
    edit: str = ""
    """The host edit the IRM was made on (:mod:`irm.hosts.interventions`; empty: none)."""

    def __post_init__(self) -> None:
        for name in ("name", "architecture", "model_type", "fingerprint", "edit"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise IRMError(f"host.{name} must be text, got {value!r}", hint="fix host in the file, or re-save this IRM")
        for name in ("hidden_size", "num_layers"):
            value = getattr(self, name)
            if not (_whole(value) and value >= 1):
                raise IRMError(f"host.{name} must be a whole number >= 1, got {value!r}", hint="fix host in the file, or re-save this IRM")


@dataclass
class IRMConfig(IRMSpec):
    """Shape and placement of an Injectable Realignment Model fitted to a host: the
    contents of ``irm_config.json`` (flat keys; see :class:`IRMSpec` for the shape fields)."""

    host: HostIdentity = field(kw_only=True)
    layers: list[int] = field(kw_only=True, metadata=_help(LAYERS_HELP))
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    rotation_sha256: str = ""
    """Checksum of the rotation matrices (:func:`irm.core.rotation.rotation_digest`), checked
    when the IRM is built from this config; empty for an IRM without rotation."""

    def __post_init__(self) -> None:
        if isinstance(self.host, dict):
            try:
                self.host = HostIdentity(**self.host)
            except TypeError as exc:
                raise IRMError(
                    f"host: {exc}".replace("HostIdentity.__init__() ", ""), hint="fix host in the file, or re-save this IRM"
                ) from None
        if not isinstance(self.host, HostIdentity):
            raise IRMError(f"host must be an object, got {self.host!r}", hint="fix host in the file, or re-save this IRM")
        if not isinstance(self.layers, (list, tuple)) or not all(_whole(i) for i in self.layers):
            raise IRMError(f"layers must be a list of whole numbers, got {self.layers!r}", hint='e.g. "layers": [0, 1, 2]')
        if len(set(self.layers)) != len(self.layers):
            raise IRMError(f"layers lists a layer twice: {self.layers!r}", hint="list each injected layer once")
        self.layers = sorted(int(i) for i in self.layers)
        if not _whole(self.format_version):
            raise IRMError(f"format_version must be a whole number, got {self.format_version!r}", hint=f"use {FORMAT_VERSION}")
        if not isinstance(self.extra, dict):
            raise IRMError(f"extra must be an object, got {self.extra!r}", hint="use {} for no extra fields")
        if not isinstance(self.rotation_sha256, str):
            raise IRMError(f"rotation_sha256 must be text, got {self.rotation_sha256!r}", hint="re-save this IRM")
        super().__post_init__()
        if not self.layers:
            raise IRMError("an IRM needs at least one injected layer", hint="use --layers all or e.g. --layers 0-7")
        if self.layers[0] < 0 or self.layers[-1] >= self.host.num_layers:
            raise IRMError(
                f"injected layers {self.layers} out of range for a {self.host.num_layers}-layer host",
                hint=f"pick layers between 0 and {self.host.num_layers - 1}",
            )
        if self.input_layer >= self.host.num_layers:
            raise IRMError(
                f"input_layer {self.input_layer} out of range for a {self.host.num_layers}-layer host",
                hint=f"pick a layer between 0 and {self.host.num_layers - 1}",
            )
        first = (self.layers[0], SITES.index(self.site))
        source = (self.input_layer, SITES.index(self.input_site))
        if first < source:
            raise IRMError(
                f"layer {self.layers[0]} at {self.site} comes before the IRM's input "
                f"(layer {self.input_layer} at {self.input_site}), so the IRM cannot have run yet",
                hint="inject only at or after the input point",
            )

    @property
    def hidden_size(self) -> int:
        return self.host.hidden_size

    @property
    def num_injected(self) -> int:
        return len(self.layers)

    @property
    def width(self) -> int:
        return int(round(self.hidden_size * self.width_multiplier))

    def num_parameters(self) -> int:
        """Parameter count, from the config alone (nothing is allocated)."""
        h, w, out = self.hidden_size, self.width, self.hidden_size * self.num_injected
        if self.depth == 0:
            dims = [h]
        else:
            dims = [h] + [w] * self.depth
        count = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
        last = dims[-1]
        if self.rank is None:
            count += last * out + out
        else:
            count += last * self.rank + self.rank * out + out
        return count

    def to_dict(self) -> dict[str, Any]:
        data = without_defaults(spec_ordered(dataclasses.asdict(self), ("host", "layers")), ABSENT_WHEN_DEFAULT)
        data["host"] = without_defaults(data["host"], {"edit": ""})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IRMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise IRMError(
                f"unknown IRM config key {key!r}",
                hint=f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(known))}",
            )
        missing = [key for key in ("host", "layers") if key not in data]
        if missing:
            raise IRMError(f"missing key {missing[0]!r}", hint="the file is incomplete; re-save or re-train this IRM")
        version = data.get("format_version", FORMAT_VERSION)
        if _whole(version) and version > FORMAT_VERSION:
            raise IRMError("this IRM was written by a newer irm", hint="upgrade irm (pip install -U irm)")
        return cls(**data)

    @classmethod
    def load(cls, directory: str | Path) -> IRMConfig:
        path = Path(directory) / CONFIG_NAME
        try:
            if path.is_file() and path.stat().st_size > MAX_JSON_BYTES:
                raise IRMError(
                    f"{path} is {path.stat().st_size} bytes, too large for an IRM config",
                    hint="the file is damaged; re-save or re-train this IRM",
                )
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IRMError(f"{path} not found", hint="point at a directory written by IRM.save_pretrained") from None
        except IsADirectoryError:
            raise IRMError(f"{path} is a directory, not a JSON file", hint="point at a directory written by IRM.save_pretrained") from None
        except PermissionError:
            raise IRMError(f"{path}: permission denied", hint="make the file readable") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IRMError(f"{path} is not valid JSON: {exc}", hint="the file is damaged; re-save or re-train this IRM") from None
        except RecursionError:
            raise IRMError(
                f"{path} is nested too deeply to be an IRM config", hint="the file is damaged; re-save or re-train this IRM"
            ) from None
        if not isinstance(data, dict):
            raise IRMError(f"{path} must hold a JSON object", hint="the file is damaged; re-save or re-train this IRM")
        try:
            return cls.from_dict(data)
        except IRMError as exc:
            raise type(exc)(f"{path}: {exc.message}", hint=exc.hint or "fix the file, or re-save or re-train this IRM") from None
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
            raise IRMError(
                f"{path}: malformed IRM config ({type(exc).__name__}: {exc})", hint="the file is damaged; re-save or re-train this IRM"
            ) from None
