"""Atomic file writes: a crash or a full disk leaves the old file (or none), never half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from irm.errors import writing


def temporary_file_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder, open for writing, with the permissions a
    plain ``open(path, "w")`` would give (``mkstemp`` makes it private, 0600, and the rename
    would carry that over: collaborators on a shared file system could not read the IRM)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), so that
    other threads never see a different one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
                fd, tmp = temporary_file_beside(path)
                tmps.append(tmp)
                with os.fdopen(fd, "wb") as fh:
                    if isinstance(data, (bytes, bytearray, memoryview)):
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    data(Path(tmp))  # the writer may replace the file (safetensors does): set the mode again
                    os.chmod(tmp, 0o666 & ~current_umask())
                    with open(tmp, "rb") as fh:
                        os.fsync(fh.fileno())
        for (path, _), tmp in zip(items, tmps):
            with writing(path):
                os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            Path(tmp).unlink(missing_ok=True)
        raise
