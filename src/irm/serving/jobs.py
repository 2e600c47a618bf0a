"""One request as the engine sees it: its prompt, route and sampling settings, the events
it sends to its consumer, and what it has generated so far."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from irm.core.routing import Route
from irm.serving.text import TextStream


@dataclass(frozen=True)
class Sampling:
    """OpenAI's sampling settings: ``temperature == 0`` is greedy decoding."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Event:
    """What a request's consumer receives: new text, and at the end a finish reason."""

    text: str = ""
    token_id: int | None = None
    record: dict[str, Any] | None = None
    finish_reason: str | None = None
    error: str | None = None


Sink = Callable[[Event], None]


@dataclass
class Job:
    """One request inside the engine."""

    prompt_ids: list[int]
    route: Route
    sampling: Sampling
    sink: Sink
    record: str = "off"
    """``off``, ``top`` (norm and top indices per token) or ``map`` (also the whole map)."""
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    finish_reason: str | None = None
