"""Record the IRM output of every real token during generation, and store it compactly.

A recording directory ``REC/`` holds:

``outputs.safetensors``
    ``outputs``: one flat ``(tokens, layers, hidden)`` array for all prompts (layer-major
    rows, so ``outputs[t]`` is already the layer x hidden heatmap of token ``t``), and
    ``offsets``: ``(prompts + 1,)`` int64, prompt ``i`` owning rows
    ``offsets[i]:offsets[i + 1]``. safetensors because it is one self-describing file
    (dtype, shape, metadata in a JSON header), has no pickle, is read by torch, numpy and
    other languages, and its raw little-endian layout can be memory-mapped
    (:func:`load_recording` does), so analyses never load more than they touch. One flat
    array instead of a file per prompt keeps the directory small and lets an analysis
    stream over all tokens in large chunks. Values are float16 by default: 2 bytes per
    value, plenty for heatmaps and rankings; ``dtype=torch.float32`` keeps full precision.
``tokens.jsonl``
    one line per row of ``outputs``: prompt id, position in the unpadded sequence, token
    id and string, and ``kind`` (``prompt`` or ``generated``).
``prompts.jsonl``
    one line per prompt: the prompt and the generated text.
``meta.json``
    host identity, IRM config, injected layers, dtype, generation settings, timing.
    Written last: a directory without it is an interrupted recording.

Row ``t`` is the IRM output computed from token ``t``'s own hidden state, i.e. for every
token that went *into* the model: the unpadded prompt, then each generated token that was
fed back (the last generated token is never fed back, so it has no row). Left padding of
the first forward pass is dropped with the attention mask; rows after a sequence's end of
text are dropped too.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import Tensor

from irm.core.attach import attach
from irm.core.io import (
    atomic_write_all,
    check_output_dir,
    current_umask,
    outermost_missing,
    remove_stale_temporaries,
    remove_tree,
    safetensors_os_errors,
)
from irm.core.network import IRM
from irm.errors import IRMError, writing
from irm.hosts.generation import encode_prompts, generate
from irm.hosts.loading import Host

OUTPUTS_FILE = "outputs.safetensors"
TOKENS_FILE = "tokens.jsonl"
PROMPTS_FILE = "prompts.jsonl"
META_FILE = "meta.json"
_SAFETENSORS_TO_NUMPY = {"F16": np.dtype("float16"), "F32": np.dtype("float32"), "I64": np.dtype("int64")}


@dataclass
class TokenRecord:
    prompt: int
    position: int
    id: int
    token: str
    kind: str  # "prompt" or "generated"


@dataclass
class Recording:
    """IRM outputs of real tokens. ``outputs`` may be a read-only memory map."""

    outputs: np.ndarray
    """``(tokens, layers, hidden)``; ``layers[k]`` names the host layer of ``outputs[:, k]``."""
    offsets: np.ndarray
    tokens: list[TokenRecord]
    prompts: list[str]
    texts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.outputs.shape[2])

    def prompt_outputs(self, i: int) -> np.ndarray:
        return self.outputs[self.offsets[i] : self.offsets[i + 1]]


class Recorder:
    """``on_output`` callback for one ``generate`` call at a time.

    Each forward pass's output is only cast and kept where it lives (no host-device sync);
    :meth:`take` then drops padding, reorders to ``(token, layer, hidden)`` and moves the
    rows to the CPU once per batch."""

    def __init__(self, dtype: torch.dtype = torch.float16) -> None:
        self.dtype = dtype
        self.steps: list[Tensor] = []

    def __call__(self, output: Tensor) -> None:
        self.steps.append(output.to(self.dtype))

    def take(self, attention_mask: Tensor, generated: Sequence[int]) -> list[Tensor]:
        """Rows of the real tokens of each sequence; ``generated[b]`` = number of real
        generated tokens of sequence ``b``. Clears the recorder."""
        steps, self.steps = self.steps, []
        if not steps:
            raise RuntimeError("the IRM did not run: is it attached with strength != 0?")
        first, rest = steps[0], steps[1:]
        if first.shape[1] != attention_mask.shape[1] or any(s.shape[1] != 1 for s in rest):
            raise RuntimeError("expected one prompt pass, then one token per pass (KV-cached generation)")
        tail = torch.cat(rest, dim=1) if rest else first[:, :0]
        mask = attention_mask.bool()
        rows = []
        for b, n in enumerate(generated):
            real = torch.cat([first[b][mask[b]], tail[b, : min(n, tail.shape[1])]])
            rows.append(real.transpose(1, 2).contiguous().cpu())
        return rows


@torch.no_grad()
def record(
    host: Host,
    irm: IRM,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    greedy: bool = True,
    seed: int | None = 0,
    chat: bool = True,
    strength: float = 1.0,
    dtype: torch.dtype = torch.float16,
) -> Recording:
    """Generate for ``prompts`` with ``irm`` attached and keep its output for every real token.
    The text is the same as :func:`irm.generate` with the same settings gives."""
    if not prompts:
        raise IRMError("no prompts to record", hint="pass a prompts file with at least one row")
    if dtype not in (torch.float16, torch.float32):
        raise IRMError(f"cannot record as {dtype}", hint="use float16 (2 bytes per value) or float32")
    if strength == 0:
        raise IRMError("strength 0 detaches the IRM, so there is nothing to record", hint="use a non-zero --strength")
    recorder = Recorder(dtype)
    tok = host.require_tokenizer()
    rows: list[Tensor] = []
    tokens: list[TokenRecord] = []
    texts: list[str] = []
    started = time.perf_counter()
    with attach(host, irm, strength=strength, on_output=recorder):
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            options = dict(max_new_tokens=max_new_tokens, greedy=greedy, chat=chat, batch_size=len(chunk))
            gens = generate(host, chunk, seed=None if seed is None else seed + start, use_cache=True, **options)
            enc = encode_prompts(host, chunk, chat=chat)
            mask = enc["attention_mask"]
            rows += recorder.take(mask, [len(g.token_ids) for g in gens])
            for b, gen in enumerate(gens):
                prompt_ids = enc["input_ids"][b][mask[b].bool()].tolist()
                fed = gen.token_ids[: rows[start + b].shape[0] - len(prompt_ids)]
                ids = prompt_ids + fed
                strings = tok.batch_decode([[i] for i in ids])
                kinds = ["prompt"] * len(prompt_ids) + ["generated"] * len(fed)
                tokens += [TokenRecord(start + b, p, i, s, k) for p, (i, s, k) in enumerate(zip(ids, strings, kinds))]
                texts.append(gen.text)
    seconds = time.perf_counter() - started
    offsets = np.cumsum([0] + [r.shape[0] for r in rows]).astype(np.int64)
    outputs = np.empty((int(offsets[-1]), *rows[0].shape[1:]), dtype=str(dtype).removeprefix("torch."))
    for i in range(len(rows)):
        outputs[offsets[i] : offsets[i + 1]] = rows[i].numpy()
        rows[i] = rows[i][:0]  # free as we go: peak memory is one copy plus one prompt
    meta = {
        "format": "irm-recording/1",
        "host": asdict(host.identity()),
        "irm_config": irm.config.to_dict(),
        "layers": list(irm.config.layers),
        "dtype": outputs.dtype.name,
        "shape": list(outputs.shape),
        "layout": "(token, layer, hidden)",
        "generation": {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "greedy": greedy,
            "seed": seed,
            "chat": chat,
            "strength": strength,
        },
        "prompts": len(prompts),
        "tokens": int(offsets[-1]),
        "seconds": round(seconds, 3),
    }
    return Recording(outputs, offsets, tokens, list(prompts), texts, meta)


RECORDING_FILES = (OUTPUTS_FILE, TOKENS_FILE, PROMPTS_FILE, META_FILE)


def is_recording_folder(directory: str | Path) -> bool:
    """True for a folder that holds only a recording's files (complete or interrupted):
    the only kind of folder ``--overwrite`` may replace with a recording."""
    entries = list(Path(directory).iterdir())
    return bool(entries) and all(e.name in RECORDING_FILES and e.is_file() and not e.is_symlink() for e in entries)


def check_recording_out(directory: str | Path, *, overwrite: bool) -> Path:
    """Check, before any generation, that a recording can be written to ``directory``
    (temporary files of a killed recording there are deleted first)."""
    out = Path(directory)
    remove_stale_temporaries(out, RECORDING_FILES)
    remove_stale_staging(out)
    return check_output_dir(out, overwrite=overwrite, is_ours=is_recording_folder, kind="a recording of `irm record`")


def staging_folder(out: Path) -> Path:
    """A new, empty folder beside ``out`` to build its next contents in (same disk, so a
    rename moves them into place); :func:`remove_stale_staging` deletes those a killed run left."""
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))


def remove_stale_staging(out: Path) -> None:
    parent = out.absolute().parent
    if parent.is_dir():
        for stale in parent.glob(f".{glob.escape(out.name)}.new-*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def save_recording(rec: Recording, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``rec`` to ``directory``. The files are written to a new folder beside it, which
    replaces the old recording only once complete: a full disk or a crash leaves the old
    recording (or nothing), never half of one."""
    out = check_recording_out(directory, overwrite=overwrite)
    absolute = Path(os.path.abspath(out))
    created = outermost_missing(out) or absolute  # the outermost folder this call creates
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out)
    try:
        arrays = {"outputs": np.ascontiguousarray(rec.outputs), "offsets": rec.offsets.astype(np.int64)}
        tokens = "".join(json.dumps(asdict(t), ensure_ascii=False) + "\n" for t in rec.tokens)
        prompts = "".join(
            json.dumps({"prompt": i, "text": prompt, "generation": text}, ensure_ascii=False) + "\n"
            for i, (prompt, text) in enumerate(zip(rec.prompts, rec.texts))
        )
        atomic_write_all(
            [
                (staging / OUTPUTS_FILE, lambda path: _save_arrays(arrays, path)),
                (staging / TOKENS_FILE, tokens.encode("utf-8")),
                (staging / PROMPTS_FILE, prompts.encode("utf-8")),
                (staging / META_FILE, (json.dumps(rec.meta, indent=2) + "\n").encode("utf-8")),
            ]
        )
        if out.exists():
            if any(out.iterdir()):
                remove_tree(out)
            else:
                out.rmdir()
        with writing(out):
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created != absolute and created.is_dir() and not any(f.is_file() for f in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)  # the folders this call made above --out
        raise
    out.chmod(0o777 & ~current_umask())  # mkdtemp makes it private
    return out


def _save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    with safetensors_os_errors():
        save_file(arrays, str(path), metadata={"layout": "(token, layer, hidden)"})


def is_recording(directory: str | Path) -> bool:
    return (Path(directory) / META_FILE).is_file() and (Path(directory) / OUTPUTS_FILE).is_file()


def _damaged(path: Path, why: str) -> IRMError:
    return IRMError(f"{path}: damaged recording file: {why}", hint="record it again with `irm record`")


def _json_lines(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The lines of a recording's JSONL file, each an object with ``fields``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _damaged(path, "the file is missing") from None
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            item = json.loads(line)
        except ValueError:
            raise _damaged(path, f"line {number} is not valid JSON") from None
        if not isinstance(item, dict) or any(f not in item for f in fields):
            raise _damaged(path, f"line {number} is not an object with {', '.join(fields)}")
        items.append(item)
    return items


def load_recording(directory: str | Path) -> Recording:
    """Open a recording; ``outputs`` is memory-mapped, read only. A damaged file (meta that
    is not JSON or has no host, broken token lines, a truncated or oversized
    ``outputs.safetensors``) is refused with a message naming it."""
    path = Path(directory)
    if not is_recording(path):
        raise IRMError(f"{path} is not a complete recording (no {META_FILE} or {OUTPUTS_FILE})", hint="write one with `irm record`")
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        raise _damaged(meta_path, "not valid JSON") from None
    if not isinstance(meta, dict):
        raise _damaged(meta_path, "not a JSON object")
    host = meta.get("host")
    if not isinstance(host, dict) or not isinstance(host.get("name"), str):
        raise _damaged(meta_path, "it does not name the host (no host.name)")
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise _damaged(meta_path, "'layers' is not a list of layer numbers")
    arrays = mmap_safetensors(path / OUTPUTS_FILE)
    outputs, offsets = arrays.get("outputs"), arrays.get("offsets")
    if outputs is None or offsets is None or outputs.ndim != 3 or offsets.ndim != 1 or offsets.dtype != np.int64:
        raise _damaged(path / OUTPUTS_FILE, "it does not hold a (token, layer, hidden) 'outputs' and int64 'offsets'")
    offsets = np.asarray(offsets)
    if len(offsets) < 2 or offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != outputs.shape[0]:
        raise _damaged(path / OUTPUTS_FILE, "its offsets do not cut the outputs into prompts")
    if outputs.shape[1] != len(layers):
        raise _damaged(path / OUTPUTS_FILE, f"{outputs.shape[1]} layers of outputs, but {META_FILE} names {len(layers)}")
    tokens = [
        TokenRecord(**{f: t[f] for f in TokenRecord.__dataclass_fields__})
        for t in _json_lines(path / TOKENS_FILE, list(TokenRecord.__dataclass_fields__))
    ]
    if len(tokens) != outputs.shape[0]:
        raise _damaged(path / TOKENS_FILE, f"{len(tokens)} tokens, but {OUTPUTS_FILE} has {outputs.shape[0]} rows")
    prompt_rows = _json_lines(path / PROMPTS_FILE, ["text", "generation"])
    if len(prompt_rows) != len(offsets) - 1:
        raise _damaged(path / PROMPTS_FILE, f"{len(prompt_rows)} prompts, but {OUTPUTS_FILE} has {len(offsets) - 1}")
    return Recording(outputs, offsets, tokens, [str(r["text"]) for r in prompt_rows], [str(r["generation"]) for r in prompt_rows], meta)


def mmap_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (8-byte header size, JSON header, data).
    A truncated or oversized file, or a header that does not describe its data, is refused."""
    path = Path(path)
    total = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _damaged(path, "truncated (shorter than a safetensors header)")
        (size,) = struct.unpack("<Q", head)
        if size > total - 8:
            raise _damaged(path, "truncated, or not a safetensors file (its header runs past the end)")
        try:
            header = json.loads(fh.read(size))
        except (ValueError, RecursionError):
            raise _damaged(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    arrays: dict[str, np.ndarray] = {}
    data_size = total - 8 - size
    end_of_data = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in info["data_offsets"])
            dtype, shape = _SAFETENSORS_TO_NUMPY[info["dtype"]], tuple(int(n) for n in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise _damaged(path, f"tensor {name!r} has an unreadable description") from None
        if any(n < 0 for n in shape) or not 0 <= start <= end or end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise _damaged(path, f"tensor {name!r}: its shape does not match its data")
        if end > data_size:
            raise _damaged(path, f"truncated: tensor {name!r} ends at byte {end} of {data_size}")
        end_of_data = max(end_of_data, end)
        if end == start:
            arrays[name] = np.zeros(shape, dtype)
        else:
            arrays[name] = np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=8 + size + start, shape=shape)
    if end_of_data != data_size:
        raise _damaged(path, f"oversized: {data_size - end_of_data} bytes after the last tensor")
    return arrays
