"""User-facing errors: a message that says what is wrong and how to fix it.

The CLI turns an :class:`IRMError` into a short message and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class IRMError(Exception):
    """An error caused by the user's input, with an optional hint on how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nFix: {self.hint}"


class HostError(IRMError):
    """The host model cannot be found, loaded or is not supported."""


class IRMMismatchError(IRMError):
    """An IRM was made for a different host or layer set."""


class DataError(IRMError):
    """An input data file is missing, unreadable or malformed."""


class DiskFullError(IRMError):
    """A write failed because the disk (or the user's quota) is full."""


def write_error(exc: OSError, path: object) -> IRMError:
    """A user-facing error for a failed write of ``path`` (disk full, read-only, no access)."""
    import errno
    from pathlib import Path

    folder = Path(str(path)).parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"disk full while writing {path}: the write was abandoned and any earlier file under that name is unchanged",
            hint=f"free space on the disk that holds {folder} (or choose another --out) and run the command again",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return IRMError(f"cannot write {path}: permission denied", hint=f"make {folder} writable or choose another --out")
    if exc.errno == errno.EROFS:
        return IRMError(f"cannot write {path}: the file system is read-only", hint="choose an --out on a writable disk")
    return IRMError(f"cannot write {path}: {exc.strerror or exc}", hint="check the disk and the path, or choose another --out")


class writing:
    """Context manager: an ``OSError`` raised while writing ``path`` becomes an :class:`IRMError`
    that says what happened (disk full, permission denied ...) and what to do."""

    def __init__(self, path: object) -> None:
        self.path = path

    def __enter__(self) -> writing:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise write_error(exc, self.path) from exc
        return False


class TrainingDivergedError(IRMError):
    """The training loss or the IRM weights stopped being finite numbers."""
