"""`IRMConfig`: everything needed to rebuild an IRM and to check it fits a host."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irm.core.sites import SITES
from irm.errors import IRMError

CONFIG_NAME = "irm_config.json"
FORMAT_VERSION = 1


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


@dataclass
class IRMConfig:
    """Shape and placement of an Injectable Realignment Model.

    The defaults are the paper's IRM: input = layer 0's ``resid_mid``, four hidden
    ``Linear`` layers of width ``3 * hidden`` with ReLU, and an output of one
    ``hidden``-sized vector per injected layer, added at ``resid_mid``.
    """

    host: HostIdentity
    layers: list[int]
    site: str = "resid_mid"
    input_layer: int = 0
    input_site: str = "resid_mid"
    depth: int = 4
    """Number of hidden layers; the network has ``depth + 1`` linears (paper: 4 -> 5)."""
    width_multiplier: float = 3.0
    rank: int | None = None
    """If set, the output linear is factorised through a bottleneck of this rank."""
    output_init: str = "zeros"
    """``zeros``: the IRM starts as the identity on the host; ``default``: PyTorch's init."""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.host, dict):
            self.host = HostIdentity(**self.host)
        self.layers = sorted(int(i) for i in self.layers)
        for name, value in (("site", self.site), ("input_site", self.input_site)):
            if value not in SITES:
                raise IRMError(f"unknown {name} {value!r}", hint=f"use one of {', '.join(SITES)}")
        if not self.layers:
            raise IRMError("an IRM needs at least one injected layer", hint="use --layers all or e.g. --layers 0-7")
        if self.layers[0] < 0 or self.layers[-1] >= self.host.num_layers:
            raise IRMError(f"injected layers {self.layers} out of range for a {self.host.num_layers}-layer host",
                           hint=f"pick layers between 0 and {self.host.num_layers - 1}")
        if self.depth < 0:
            raise IRMError(f"depth must be >= 0, got {self.depth}", hint="use --depth 4 (the paper's IRM)")
        if self.rank is not None and self.rank < 1:
            raise IRMError(f"rank must be a positive integer, got {self.rank}", hint="use e.g. --rank 64, or leave it out for a full IRM")
        if self.output_init not in ("zeros", "default"):
            raise IRMError(f"unknown output_init {self.output_init!r}", hint="use 'zeros' or 'default'")
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
        return dataclasses.asdict(self)

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
        if int(data.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise IRMError("this IRM was written by a newer irm", hint="upgrade irm (pip install -U irm)")
        return cls(**data)

    def save_to(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> IRMConfig:
        path = Path(directory) / CONFIG_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IRMError(f"{path} not found", hint="point at a directory written by IRM.save_pretrained") from None
        except IsADirectoryError:
            raise IRMError(f"{path} is a directory, not a JSON file", hint="point at a directory written by IRM.save_pretrained") from None
        except PermissionError:
            raise IRMError(f"{path}: permission denied", hint="make the file readable") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IRMError(f"{path} is not valid JSON: {exc}", hint="the file is damaged; re-save or re-train this IRM") from None
        if not isinstance(data, dict):
            raise IRMError(f"{path} must hold a JSON object", hint="the file is damaged; re-save or re-train this IRM")
        try:
            return cls.from_dict(data)
        except IRMError as exc:
            raise type(exc)(f"{path}: {exc.message}", hint=exc.hint or "fix the file, or re-save or re-train this IRM") from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise IRMError(f"{path}: malformed IRM config ({type(exc).__name__}: {exc})",
                           hint="the file is damaged; re-save or re-train this IRM") from None
