"""Library output a user cannot act on, switched off for one call and restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_transformers_progress_bars() -> Iterator[None]:
    """transformers' progress bars ("Loading weights" at every model load) off for the body
    (also as a decorator); on again after, if they were on. (Its GGUF reader's one-time
    "Converting and de-quantizing" bar uses tqdm directly and has no such setting.)"""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
