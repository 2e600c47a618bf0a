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
