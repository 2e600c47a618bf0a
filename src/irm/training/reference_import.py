"""Import an IRM from a checkpoint written by the published (paper) implementation.

That code saved a PyTorch Lightning checkpoint whose ``state_dict`` holds the whole host
and the IRM, the IRM repeated under every decoder layer: ``model.irm.basic_forward.{0,2,4,6,8}.
{weight,bias}`` and ``model.layers.N.irm.basic_forward...``. Its forward is the one
:class:`irm.IRM` computes (input = layer 0 ``resid_mid``; output viewed as
``(..., hidden, layer)`` with the layer index fastest; slice ``k`` added at ``resid_mid`` of
the k-th injected layer), so importing is renaming one copy of the tensors, plus checks.

The file is untrusted: it is read with ``torch.load(weights_only=True)``, which refuses
pickled code, and memory-mapped, so only the IRM tensors are ever copied into memory.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from irm.core.config import IRMConfig
from irm.core.layers import format_layers, parse_layers
from irm.core.network import IRM
from irm.errors import IRMError, IRMMismatchError
from irm.hosts.loading import Host, embedding_fingerprint

_IRM_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?irm\.)basic_forward\.(?P<index>\d+)\.(?P<kind>weight|bias)$", re.IGNORECASE)
_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBEDDING_SUFFIX = "embed_tokens.weight"
_LAYERS_HPARAMS = ("irm_layers", "injection_layers", "injected_layers", "layers")


@dataclass
class ReferenceCheckpoint:
    """One copy of the IRM found in a reference checkpoint, with what else it tells us."""

    path: Path
    state: dict[str, Tensor]
    """``net.{i}.weight`` / ``net.{i}.bias``, cloned out of the file."""
    copies: list[str]
    """The prefixes under which the IRM was found (all checked equal)."""
    saved_layers: list[int] | None = None
    """Injected layers from the saved hyper-parameters, in the file's slice order."""
    host_layers: int | None = None
    """Number of decoder layers the checkpoint's host weights name, if any."""
    embedding_fingerprint: str | None = None

    @property
    def linear_indices(self) -> list[int]:
        return sorted(int(k.split(".")[1]) for k in self.state if k.endswith(".weight"))

    @property
    def hidden_size(self) -> int:
        return int(self.state["net.0.weight"].shape[1])

    @property
    def output_size(self) -> int:
        return int(self.state[f"net.{self.linear_indices[-1]}.weight"].shape[0])


def _load(path: Path) -> Any:
    if not path.is_file():
        raise IRMError(f"checkpoint {path} not found", hint="pass the .ckpt file written by the paper's training code")
    mmap = zipfile.is_zipfile(path)  # legacy (pre-zip) files cannot be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise IRMError(
                f"{path} is not a readable PyTorch checkpoint ({_detail(exc)})",
                hint="the file may be truncated or corrupted; copy it again",
            ) from None
        raise IRMError(
            f"refused to load {path}: it holds pickled Python objects, not just tensors (it references "
            f"{found.group(1)}); irm loads checkpoints with weights_only=True and never runs code from them",
            hint="re-save the checkpoint's state_dict alone (torch.save(ckpt['state_dict'], ...)) on a machine "
            "where you trust the file, and import that",
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        raise IRMError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {_detail(exc)})",
            hint="the file may be truncated or corrupted; copy it again",
        ) from None


def _detail(exc: BaseException) -> str:
    """The informative line of a torch.load error (for weights-only errors, the reader's own)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "no details"


def _find_layers(hparams: Any, depth: int = 0) -> list[int] | None:
    """A list of layer indices under a plausible key, searched through nested dicts."""
    if not isinstance(hparams, Mapping) or depth > 3:
        return None
    for key, value in hparams.items():
        if str(key).lower() in _LAYERS_HPARAMS and isinstance(value, (list, tuple)) and value:
            if all(isinstance(i, int) and not isinstance(i, bool) for i in value):
                return [int(i) for i in value]
    for value in hparams.values():
        found = _find_layers(value, depth + 1)
        if found is not None:
            return found
    return None


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    shares = (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.stride() == b.stride()
    )
    return shares or torch.equal(a, b)  # copies saved from one module share storage: no need to read them


def read_reference_checkpoint(path: str | Path) -> ReferenceCheckpoint:
    """Read the IRM out of a reference checkpoint; nothing else is copied into memory."""
    path = Path(path)
    ckpt = _load(path)
    if not isinstance(ckpt, Mapping):
        raise IRMError(
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict",
            hint="pass the Lightning .ckpt file written by the paper's training code",
        )
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping):
        raise IRMError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")

    groups: dict[str, dict[str, Tensor]] = {}
    host_layers: set[int] = set()
    embedding = None
    for key, value in state.items():
        key = str(key)
        match = _IRM_KEY.match(key)
        if match is None and "basic_forward." in key.lower():
            raise IRMError(f"{path}: unexpected IRM tensor {key!r}", hint="expected basic_forward.N.weight / .bias")
        if match is not None:
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise IRMError(f"{path}: {key} is not a floating-point tensor")
            groups.setdefault(match["prefix"], {})[f"net.{match['index']}.{match['kind'].lower()}"] = value
            continue
        if (layer := _LAYER_KEY.search(key)) is not None:
            host_layers.add(int(layer.group(1)))
        if key.endswith(_EMBEDDING_SUFFIX) and isinstance(value, Tensor) and value.dim() == 2:
            embedding = value
    if not groups:
        keys = [str(k) for k in list(state)[:5]]
        raise IRMError(
            f"{path} is not an IRM checkpoint: no '*irm.basic_forward.*' tensors "
            f"(its state_dict has {len(state)} keys{', e.g. ' + ', '.join(keys) if keys else ''})",
            hint="pass a checkpoint saved by the paper's IRM training code",
        )

    for prefix, tensors in sorted(groups.items()):
        for name in sorted(tensors, key=_net_order):
            if not bool(torch.isfinite(tensors[name]).all()):
                raise IRMError(
                    f"{path}: the IRM tensor {prefix}{name.replace('net.', 'basic_forward.')} holds NaN or inf values",
                    hint="the checkpoint is corrupted or its training diverged; it cannot be imported",
                )
    prefixes = sorted(groups, key=lambda p: (p.count("."), p))  # model.irm. first
    first = groups[prefixes[0]]
    for prefix in prefixes[1:]:
        other = groups[prefix]
        if set(other) != set(first):
            diff = sorted(set(other) ^ set(first))[0].replace("net.", "basic_forward.")
            raise IRMError(
                f"{path}: IRM copies under {prefixes[0]!r} and {prefix!r} hold different tensors (only one has {diff})",
                hint="the checkpoint is inconsistent; it cannot be imported",
            )
        for name in sorted(first, key=_net_order):
            if not _same(first[name], other[name]):
                raise IRMError(
                    f"{path}: IRM copies under {prefixes[0]!r} and {prefix!r} differ, first at {name.replace('net.', 'basic_forward.')}",
                    hint="the published code saves identical copies; this checkpoint was edited or is corrupted",
                )

    cloned = {name: first[name].detach().clone() for name in sorted(first, key=_net_order)}
    ref = ReferenceCheckpoint(
        path=path,
        state=cloned,
        copies=prefixes,
        saved_layers=_find_layers(ckpt.get("hyper_parameters")),
        host_layers=max(host_layers) + 1 if host_layers else None,
        embedding_fingerprint=embedding_fingerprint(embedding) if embedding is not None else None,
    )
    _check_shapes(ref)
    return ref


def _net_order(name: str) -> tuple[int, str]:
    return int(name.split(".")[1]), name


def _check_shapes(ref: ReferenceCheckpoint) -> None:
    indices = ref.linear_indices
    if not indices or indices != list(range(0, 2 * len(indices), 2)):
        raise IRMError(
            f"{ref.path}: IRM linear layers at basic_forward indices {indices}, expected 0, 2, 4, ...",
            hint="only the paper's Linear/ReLU stack can be imported",
        )
    previous = None
    for i in indices:
        weight, bias = ref.state[f"net.{i}.weight"], ref.state.get(f"net.{i}.bias")
        if weight.dim() != 2 or bias is None or bias.shape != weight.shape[:1]:
            raise IRMError(
                f"{ref.path}: basic_forward.{i} is not a Linear layer with bias "
                f"(weight {tuple(weight.shape)}, bias {None if bias is None else tuple(bias.shape)})"
            )
        if previous is not None and weight.shape[1] != previous:
            raise IRMError(f"{ref.path}: basic_forward.{i} takes {weight.shape[1]} inputs but the layer before gives {previous}")
        previous = weight.shape[0]
    widths = {int(ref.state[f"net.{i}.weight"].shape[0]) for i in indices[:-1]}
    if len(widths) > 1:
        raise IRMError(
            f"{ref.path}: the IRM's hidden layers have different widths {sorted(widths)}",
            hint="only IRMs with one hidden width can be imported",
        )


def _check_host(ref: ReferenceCheckpoint, host: Host) -> None:
    identity = host.identity()
    h = host.hidden_size
    if ref.hidden_size != h:
        raise IRMMismatchError(
            f"the IRM in {ref.path} reads hidden states of size {ref.hidden_size}, host {host.name!r} has hidden size {h}",
            hint="pass the --host the checkpoint was trained on",
        )
    if ref.host_layers is not None and ref.host_layers != host.num_layers:
        raise IRMMismatchError(
            f"{ref.path} holds a {ref.host_layers}-layer host, {host.name!r} has {host.num_layers} layers",
            hint="pass the --host the checkpoint was trained on",
        )
    if ref.embedding_fingerprint is not None and ref.embedding_fingerprint != identity.fingerprint:
        raise IRMMismatchError(
            f"the host weights in {ref.path} are not those of host {host.name!r} ({identity.architecture}): "
            f"input embeddings differ (fingerprint {ref.embedding_fingerprint} != {identity.fingerprint})",
            hint="pass the --host the checkpoint was trained on (same model, same weights)",
        )
    if ref.output_size % h:
        raise IRMMismatchError(f"the IRM in {ref.path} outputs {ref.output_size} values, not a multiple of hidden size {h}")


def _resolve_layers(ref: ReferenceCheckpoint, host: Host, layers: str | list[int] | None) -> list[int]:
    """Injected layers in the file's slice order (slice k belongs to the k-th entry)."""
    count = ref.output_size // host.hidden_size
    if isinstance(layers, (list, tuple)):
        order = [parse_layers([i], host.num_layers)[0] for i in layers]
        source = "--layers"
    elif layers is not None:
        order, source = parse_layers(layers, host.num_layers), "--layers"
    elif ref.saved_layers is not None:
        order, source = [parse_layers([i], host.num_layers)[0] for i in ref.saved_layers], "the checkpoint's hyper_parameters"
    elif count == host.num_layers:
        return list(range(count))
    else:
        raise IRMError(
            f"the IRM in {ref.path} injects {count} of {host.name!r}'s {host.num_layers} layers and the checkpoint does not say which",
            hint=f"pass --layers with {count} layers, as in the training config (e.g. --layers 2,3 or --layers 0-7)",
        )
    if len(set(order)) != len(order):
        raise IRMError(f"layers {order} from {source} repeat a layer")
    if len(order) != count:
        raise IRMError(
            f"{source} names {len(order)} layers ({format_layers(sorted(order))}) but the IRM in "
            f"{ref.path} outputs {count} (output size {ref.output_size} = {count} x hidden {host.hidden_size})",
            hint=f"pass --layers with {count} layers",
        )
    return order


def irm_from_reference(ref: ReferenceCheckpoint, host: Host, *, layers: str | list[int] | None = None) -> IRM:
    """Build an :class:`IRM` for ``host`` that computes what the reference IRM computes."""
    _check_host(ref, host)
    order = _resolve_layers(ref, host, layers)
    h, indices = host.hidden_size, ref.linear_indices
    width = int(ref.state["net.0.weight"].shape[0]) if len(indices) > 1 else h
    config = IRMConfig(
        host=host.identity(),
        layers=sorted(order),
        site="resid_mid",
        input_layer=0,
        input_site="resid_mid",
        depth=len(indices) - 1,
        width_multiplier=width / h,
        output_init="default",
        extra={"imported_from": str(ref.path)},
    )
    state = dict(ref.state)
    if order != config.layers:
        # Our slice j belongs to the j-th layer in sorted order; the file's slice k to order[k].
        # Output row d * L + k is (hidden d, slice k): permute the last linear's rows to match.
        last = indices[-1]
        slots = torch.tensor([order.index(layer) for layer in config.layers])
        rows = (torch.arange(h)[:, None] * len(order) + slots[None, :]).reshape(-1)
        state[f"net.{last}.weight"] = state[f"net.{last}.weight"][rows]
        state[f"net.{last}.bias"] = state[f"net.{last}.bias"][rows]
    dtype = state["net.0.weight"].dtype
    model = IRM(config, dtype=dtype, device="meta")
    want = model.state_dict()
    for name, tensor in state.items():
        if name not in want or tensor.shape != want[name].shape:
            raise IRMError(
                f"{ref.path}: basic_forward.{name[4:]} has shape {tuple(tensor.shape)}, which no paper-style IRM for this host has",
                hint="only the paper's Linear/ReLU stack can be imported",
            )
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.to(host.device)


def import_reference_checkpoint(
    ckpt_path: str | Path,
    host: Host,
    *,
    layers: str | list[int] | None = None,
    out_dir: str | Path | None = None,
) -> IRM:
    """Import the IRM from a checkpoint of the published implementation.

    ``layers`` names the injected layers when the checkpoint does not (a spec such as
    ``"2,3"``, or a list in the file's slice order). With ``out_dir``, the IRM is also
    written there as an ordinary IRM directory.
    """
    model = irm_from_reference(read_reference_checkpoint(ckpt_path), host, layers=layers)
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model
