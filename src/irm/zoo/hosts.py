"""Zoo hosts by name: ``zoo-<positions>-<norm>-<head>`` (``irm zoo list``) is the model of
that name in the cached zoo, ``$IRM_CACHE/zoo`` (``irm zoo build`` makes it).

Importing this module registers the zoo's model type with transformers' Auto classes (see
:mod:`irm.zoo.modeling`), so a zoo model folder also loads by its path.
"""

from __future__ import annotations

from pathlib import Path

from irm.errors import HostError
from irm.hosts.loading import cache_dir
from irm.zoo.variants import VARIANTS, ZOO_PREFIX

MODEL_REPORT = "zoo_model.json"
"""Written last into a finished zoo model folder."""


def default_zoo_dir() -> Path:
    return cache_dir() / "zoo"


def zoo_host_folder(name: str) -> Path | None:
    """The cached folder of a zoo host name, or None when ``name`` is not one."""
    for variant in VARIANTS:
        if name == variant.name:
            return default_zoo_dir() / name
    return None


def zoo_host_source(name: str) -> str:
    """What to load for host ``name``: a zoo host name becomes its cached folder (a
    :class:`HostError` with the command that builds it when it is not built yet); any
    other name is returned unchanged."""
    folder = zoo_host_folder(name)
    if folder is None:
        if name.startswith(ZOO_PREFIX) and "/" not in name and not Path(name).exists():
            raise HostError(
                f"unknown zoo host {name!r}",
                hint="zoo hosts: " + ", ".join(v.name for v in VARIANTS) + " (`irm zoo list`)",
            )
        return name
    if not (folder / MODEL_REPORT).is_file():
        key = next(v.key for v in VARIANTS if v.name == name)
        raise HostError(
            f"zoo host {name!r} is not built yet (looked in {folder})",
            hint=f"build it with `irm zoo build --variants {key}` (minutes on a CPU), or the whole zoo with `irm zoo build`",
        )
    return str(folder)
