"""The lock on a run folder: one ``irm train`` at a time writes a given ``--out``.

An ``fcntl.flock`` on a small file beside the run folder (``.NAME.lock``), held for the
whole run, ``--resume`` included. The kernel drops it when the process ends, however it
ends (kill -9 too), so a lock never outlives its process. The file is beside the folder,
not in it, so that ``--overwrite`` can move the old folder away while the lock is held.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from irm.core.io import outermost_missing
from irm.errors import IRMError, writing


def lock_path(run: Path) -> Path:
    """The lock file of the run folder ``run``."""
    run = Path(os.path.abspath(run))
    return run.parent / f".{run.name}.lock"


@contextmanager
def run_lock(run: Path, option: str = "--out", command: str = "irm train") -> Iterator[None]:
    """Hold the lock on ``run`` for the body, or refuse at once (naming the process that
    holds it) when another process has it. Folders made only to hold the lock file are
    removed again when they are left empty."""
    path = lock_path(run)
    made = outermost_missing(path.parent)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, run, option, command)
    try:
        yield
    finally:
        try:
            if _same_file(fd, path):
                path.unlink()
        except OSError:
            pass
        os.close(fd)
        if made is not None:
            _remove_empty(path.parent, made)


def _acquire(path: Path, run: Path, option: str, command: str) -> int:
    while True:
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise IRMError(
                f"{option} {run} is in use: another {command} ({holder}) is writing it",
                hint=f"wait for that process to finish (or stop it), then run again; or choose another {option}",
            ) from None
        if _same_file(fd, path):  # not unlinked by its last holder between open and flock
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv[:1] + sys.argv[1:6])}".encode())
            return fd
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 500, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that is still starting"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _remove_empty(folder: Path, top: Path) -> None:
    """rmdir ``folder`` and its parents up to ``top`` while they are empty."""
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return
        folder = folder.parent
