"""Atomic file writes: a crash or a full disk leaves the old file (or none), never half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import writing


def atomic_write(path: Path, data: bytes | Callable[[Path], Any]) -> None:
    """Write ``data`` (bytes, or a function that writes a given path) atomically to ``path``."""
    atomic_write_all([(path, data)])


def atomic_write_all(items: list[tuple[Path, bytes | Callable[[Path], Any]]]) -> None:
    """Write every file to a temporary name next to it and fsync it; only when all are
    written, rename them into place. A crash or a full disk leaves the old files (or none),
    never half a file or a mix, and no temporary file behind; an ``OSError`` becomes an
    :class:`IRMError` that says what happened (see :func:`irm.errors.writing`)."""
    tmps: list[str] = []
    try:
        for path, data in items:
            with writing(path):
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                tmps.append(tmp)
                with os.fdopen(fd, "wb") as fh:
                    if isinstance(data, (bytes, bytearray, memoryview)):
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    data(Path(tmp))
                    with open(tmp, "rb") as fh:
                        os.fsync(fh.fileno())
        for (path, _), tmp in zip(items, tmps):
            with writing(path):
                os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            Path(tmp).unlink(missing_ok=True)
        raise
