"""Files irm writes: atomic writes (a crash or a full disk leaves the old file, or none,
never half a file) and the one guard on output paths (what ``--out`` may be and what
``--overwrite`` may replace)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from irm.errors import IRMError, writing


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


def outermost_missing(path: str | Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what ``mkdir -p`` would
    create, and so what a failed command that made it must remove), or None if ``path`` exists."""
    path = Path(os.path.abspath(path))
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_stale_temporaries(folder: Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files (:func:`temporary_file_beside`) that a killed run left in
    ``folder`` for the files ``names``; return what was deleted. Links are never followed."""
    removed: list[Path] = []
    if folder.is_symlink() or not folder.is_dir():
        return removed
    for name in names:
        for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


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


@contextmanager
def safetensors_os_errors() -> Iterator[None]:
    """Raise safetensors' (Rust) I/O failures, such as a full disk, as the ``OSError`` they
    are, so that :func:`irm.errors.writing` can say what happened."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        raise OSError(int(found.group(1)), os.strerror(int(found.group(1)))) from exc


# ----------------------------------------------------------------------- output paths
# One guard for every command that writes: what --out may be, and what --overwrite may
# replace. Nothing here deletes anything it has not first checked it may delete whole.


def _protected(path: Path) -> str | None:
    """Why ``path`` must never be replaced as a whole (or None): the root, the home folder,
    the working directory or any folder above it."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "the root folder"
    if resolved == Path.home().resolve():
        return "your home folder"
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "the current folder" if resolved == cwd else "a folder that holds the current folder"
    return None


def _check_parent_writable(path: Path, option: str) -> None:
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise IRMError(f"{option} {path}: {parent} is a file, not a folder", hint=f"choose another {option}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise IRMError(f"cannot write {option} {path}: {parent} is not writable", hint=f"make {parent} writable or choose another {option}")


def check_output_file(path: str | Path, *, overwrite: bool, option: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be written as a new file: not a folder, not
    a symbolic link, in a writable folder, and new unless ``overwrite``."""
    path = Path(path)
    if path.is_symlink():
        raise IRMError(
            f"{option} {path} is a symbolic link; irm never writes through links",
            hint=f"pass the link's target ({os.path.realpath(path)}) or another {option}",
        )
    if path.is_dir():
        raise IRMError(f"{option} {path} is a folder, not a file", hint=f"name a file, e.g. {option} {path / 'out'}")
    if path.exists() and not overwrite:
        raise IRMError(f"{option} {path} already exists", hint=f"pass --overwrite to replace it, or choose another {option}")
    _check_parent_writable(path, option)
    return path


def check_output_dir(
    path: str | Path,
    *,
    overwrite: bool,
    is_ours: Callable[[Path], bool],
    kind: str,
    option: str = "--out",
    resume_hint: str = "",
) -> Path:
    """Check, before any work, that ``path`` can become an output folder of ``kind``: not a
    file or a link, in a writable folder, and empty or new; with ``overwrite`` an existing
    folder is accepted only when ``is_ours`` says irm wrote it (a folder of other files is
    never replaced), and never the root, the home folder or the working directory."""
    path = Path(path)
    if path.is_symlink():
        raise IRMError(
            f"{option} {path} is a symbolic link; irm never writes or deletes through links",
            hint=f"pass the link's target ({os.path.realpath(path)}) or another {option}",
        )
    if path.exists() and not path.is_dir():
        raise IRMError(f"{option} {path} is a file, not a folder", hint=f"choose another {option}")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise IRMError(
                f"{option} {path} already exists and is not empty",
                hint=f"pass --overwrite to replace it{resume_hint}, or choose another {option}",
            )
        why = _protected(path)
        if why is not None:
            raise IRMError(
                f"{option} {path} is {why}; --overwrite never replaces it", hint=f"choose a new folder for {option}, e.g. {option} runs/new"
            )
        if not is_ours(path):
            raise IRMError(
                f"{option} {path} holds files that are not {kind}; --overwrite replaces only {kind}",
                hint=f"choose a new or empty folder for {option}, or move those files away first",
            )
        check_removable(path, option)
    _check_parent_writable(path, option)
    return path


def check_removable(path: Path, option: str = "--out") -> None:
    """Refuse, before deleting anything, a tree that could not be deleted whole (a folder
    in it that is not writable, a link to a folder)."""
    for folder, _dirs, _files in os.walk(path, followlinks=False):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise IRMError(
                f"{option} {path} cannot be replaced: {folder} is not writable, so part of it could not be deleted",
                hint=f"make {folder} writable, or choose another {option}; nothing was deleted",
            )
    parent = path.absolute().parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise IRMError(
            f"{option} {path} cannot be replaced: {parent} is not writable", hint=f"choose another {option}; nothing was deleted"
        )


def remove_tree(path: Path, option: str = "--out") -> None:
    """Delete an output folder that :func:`check_output_dir` accepted: it is first renamed
    aside (one atomic step), then deleted, so a failure never leaves half of it under its name."""
    if path.is_symlink():
        raise IRMError(f"{option} {path} is a symbolic link; irm never deletes through links")
    check_removable(path, option)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.absolute().parent))
    with writing(path):
        os.replace(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)
