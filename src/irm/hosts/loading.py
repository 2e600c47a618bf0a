"""Load a frozen host model and its tokenizer.

Built-in names:

``smollm2-135m-instruct`` (default), ``gemma3-270m``, ``qwen2.5-coder-0.5b-instruct`` ...
    Real models shipped as GGUF files in pip packages (:mod:`irm.hosts.builtin` lists them).
    The first load checks and de-quantises the file and caches a safetensors copy under
    ``$IRM_CACHE`` (default ``~/.cache/irm``, see :mod:`irm.hosts.gguf_cache`); later loads
    take a few seconds.
``tiny-random-*``
    Random-weight hosts of every supported architecture (see :mod:`irm.tiny_hosts`).

Anything else is a local model folder, a ``.gguf`` file, or a hub id that is already in
the local Hugging Face cache. irm never downloads a model unless asked to
(``allow_download=True``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from irm.core.config import HostIdentity, IRMConfig
from irm.core.quiet import no_transformers_progress_bars
from irm.core.sites import ArchitectureSpec, resolve_architecture, supported_model_types
from irm.errors import HostError, IRMMismatchError
from irm.hosts import gguf_cache
from irm.hosts.builtin import BUILTIN_HOSTS, DEFAULT_HOST
from irm.hosts.gguf_cache import cache_dir as cache_dir  # the cache root, for what else keeps files there
from irm.hosts.tiny import TINY_CONFIGS, build_tiny, byte_tokenizer


@dataclass
class Host:
    """A frozen host: the transformers model, its tokenizer and where to hook it.

    ``tokenizer`` is ``None`` for a model folder without tokenizer files: such a host
    serves everything that needs no text (forward passes on token ids, importing a
    reference checkpoint); what needs text calls :meth:`require_tokenizer`."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    name: str
    spec: ArchitectureSpec
    edit: str = ""
    """The edit applied after loading (:mod:`irm.hosts.interventions`; ``""``: none)."""

    def require_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, or a :class:`HostError` saying this host has none."""
        if self.tokenizer is None:
            raise HostError(
                f"this host has no tokenizer: {self.name} holds a model but no tokenizer files, and this needs text",
                hint="copy the tokenizer files (tokenizer.json, tokenizer_config.json ...) of the same model into the folder",
            )
        return self.tokenizer

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self.spec.layers(self.model))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def has_chat_template(self) -> bool:
        return self.tokenizer is not None and bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_length(self) -> int | None:
        """The most positions the host can attend over (None when its config does not say)."""
        return context_length(self.model)

    def identity(self) -> HostIdentity:
        config = self.model.config
        arch = (getattr(config, "architectures", None) or [type(self.model).__name__])[0]
        return HostIdentity(
            name=self.name,
            architecture=arch,
            model_type=str(config.model_type),
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            fingerprint=host_fingerprint(self.model),
            edit=self.edit,
        )


def context_length(model: PreTrainedModel) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def host_fingerprint(model: PreTrainedModel) -> str:
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    return embedding_fingerprint(weight)


def embedding_fingerprint(weight: torch.Tensor) -> str:
    """A short hash of the first rows of an input embedding, rounded to bfloat16 so that
    the same weights loaded in fp32 or bf16 give the same fingerprint."""
    rows = weight[: min(64, weight.shape[0])].detach().to("cpu", torch.bfloat16).view(torch.int16)
    return hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]


def check_host_matches(config: IRMConfig, host: Host) -> None:
    """Refuse an IRM made for another host, naming both."""
    want, have = config.host, host.identity()
    if want.edit != have.edit:
        shown = {"": "no edit"}
        raise IRMMismatchError(
            f"this IRM was made on host {want.name!r} with {shown.get(want.edit, 'edit ' + repr(want.edit))}, "
            f"and the host given has {shown.get(have.edit, 'edit ' + repr(have.edit))}",
            hint=f"load the host with --host-edit {want.edit or 'none'}",
        )
    problems = []
    for field in ("model_type", "hidden_size", "num_layers", "fingerprint"):
        a, b = getattr(want, field), getattr(have, field)
        if a and b and a != b:
            if type(a) is not type(b):
                problems.append(f"{field} {a!r} ({type(a).__name__}) != {b!r} ({type(b).__name__})")
            else:
                problems.append(f"{field} {a} != {b}")
    if problems:
        raise IRMMismatchError(
            f"this IRM was made for host {want.name!r} ({want.architecture}, hidden {want.hidden_size}, "
            f"{want.num_layers} layers) and does not fit host {have.name!r} ({have.architecture}, "
            f"hidden {have.hidden_size}, {have.num_layers} layers): " + "; ".join(problems),
            hint=f"load it with --host {want.name}, or pass --force if you know the weights are the same",
        )


def builtin_hosts() -> list[str]:
    return [*BUILTIN_HOSTS, *TINY_CONFIGS]


def is_cached(name: str) -> bool:
    """Whether ``name`` loads without converting anything first."""
    if name in BUILTIN_HOSTS:
        return gguf_cache.is_cached(BUILTIN_HOSTS[name])
    return name in TINY_CONFIGS  # built in memory, nothing to cache


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise HostError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    return table[dtype]


DEVICE_HINT = "use --device auto, cpu, cuda or cuda:N (or mps on Apple silicon)"


def resolve_device(device: str | torch.device | None, *, option: str = "--device") -> torch.device:
    """The torch device for a ``--device`` value, checked before any work starts: an
    unknown name (``gpu0``) or a device this machine lacks (``cuda`` without CUDA, ``cuda:3``
    with two GPUs) is a :class:`HostError` naming ``option``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise HostError(f"{option} {device!r} is not a device name", hint=DEVICE_HINT) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HostError(f"{option} {device!r}: CUDA is not available on this machine", hint="use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HostError(
                f"{option} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                hint=f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}",
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise HostError(f"{option} {device!r}: MPS is not available on this machine", hint="use --device cpu (or auto)")
    elif dev.type != "cpu":
        raise HostError(f"{option} {device!r}: irm runs hosts on cpu, cuda or mps", hint=DEVICE_HINT)
    return dev


@no_transformers_progress_bars()
def load_host(
    name_or_path: str = DEFAULT_HOST,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "auto",
    allow_download: bool = False,
    edit: str = "none",
) -> Host:
    """Load a host, frozen: eval mode and no parameter requires grad; ``edit`` (``untie``,
    ``fold-norm``, ``permute:SEED``: :mod:`irm.hosts.interventions`) is applied last."""
    from irm.hosts.interventions import apply_host_edit, parse_host_edit

    parsed = parse_host_edit(edit)  # a bad edit is refused before the slow load
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if name_or_path in BUILTIN_HOSTS:
        model, tokenizer = _load_cached(gguf_cache.prepare(BUILTIN_HOSTS[name_or_path]), torch_dtype)
    elif name_or_path in TINY_CONFIGS:
        model, tokenizer = build_tiny(name_or_path, dtype=torch_dtype), byte_tokenizer()
    else:
        from irm.zoo.hosts import zoo_host_source  # zoo-* names; registers the zoo's model type

        model, tokenizer = _load_pretrained(zoo_host_source(name_or_path), torch_dtype, allow_download)
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    spec = resolve_architecture(model)
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if parsed.kind:
        apply_host_edit(model, parsed)
    return Host(model=model, tokenizer=tokenizer, name=name_or_path, spec=spec, edit=parsed.name)


def load_host_for(identity: HostIdentity, name: str | None = None, *, device: str | torch.device | None = "auto") -> Host:
    """The host an IRM was made for (``identity``: its config's ``host``), with the same
    edit; ``name`` loads another host by that name instead (with the same edit)."""
    return load_host(name or identity.name, device=device, edit=identity.edit or "none")


def _load_pretrained(name_or_path: str, dtype: torch.dtype, allow_download: bool) -> tuple[Any, Any]:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise HostError(f"GGUF file {path} not found")
        return _load_gguf(path, dtype)
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not path.is_dir():
        raise HostError(
            f"host {name_or_path!r} is neither a built-in name nor an existing model folder",
            hint="built-in hosts: " + ", ".join(builtin_hosts()) + " (`irm hosts` lists them)",
        )
    source = str(path) if path.is_dir() else name_or_path
    local_only = not allow_download
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if "/" not in name_or_path:
            raise HostError(
                f"unknown host {name_or_path!r}",
                hint="built-in hosts: " + ", ".join(builtin_hosts()) + "; or pass a local model folder",
            ) from None
        raise HostError(
            f"host {name_or_path!r} is not available locally and irm does not download models by default ({exc.__class__.__name__})",
            hint="download it on a machine with access (e.g. `hf download NAME --local-dir DIR`) and pass --host DIR, "
            "or allow downloading with --allow-download",
        ) from None
    if path.is_dir():
        _check_model_folder(path, config)
    elif config.model_type not in supported_model_types():
        raise _not_a_decoder(name_or_path, config)
    tokenizer = _load_tokenizer(source, path if path.is_dir() else None, local_only)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise HostError(
            f"cannot load the model weights of host {name_or_path!r}: {_first_line(exc)}",
            hint="the folder's weights are damaged or incomplete; download the model again",
        ) from None
    return model, tokenizer


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "special_tokens_map.json",
)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.pth")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _not_a_decoder(name: str, config: Any) -> HostError:
    return HostError(
        f"host {name!r} is a {config.model_type!r} model, not a decoder language model irm supports",
        hint="irm supports decoder-only models of type " + ", ".join(supported_model_types()),
    )


def _check_model_folder(path: Path, config: Any) -> None:
    """Refuse, before loading anything, a folder whose config is not a supported decoder
    LM, or that holds a config but no weights."""
    if getattr(config, "model_type", None) not in supported_model_types():
        raise _not_a_decoder(str(path), config)
    if not any(next(path.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS):
        raise HostError(
            f"model folder {path} has a config.json but no weights (no *.safetensors or *.bin file)",
            hint="copy the model's weight files into the folder, or download the model again",
        )


def _load_tokenizer(source: str, folder: Path | None, local_only: bool) -> PreTrainedTokenizerBase | None:
    """The folder's tokenizer; ``None`` for a model folder with no tokenizer files at all."""
    if folder is not None and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise HostError(
            f"cannot load the tokenizer of host {source!r}: {_first_line(exc)}",
            hint="the tokenizer files are damaged; copy them again from the model",
        ) from None


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except HostError:
        raise
    except Exception as exc:  # the GGUF reader raises many kinds (ValueError, struct.error, KeyError ...)
        raise HostError(
            f"{path} is not a readable GGUF model ({type(exc).__name__}: {_first_line(exc)})",
            hint="the file is damaged or not a GGUF of a supported decoder model; download it again",
        ) from None
    return model.to(dtype), tokenizer  # type: ignore[arg-type]


def _load_cached(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    return model, tokenizer
