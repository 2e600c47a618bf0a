"""OpenAI's response and chunk objects (``chat.completion``, ``text_completion`` and their
streamed chunks), with the server's ``irm`` and ``irm_record`` fields."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from irm.serving.jobs import Event, Job
from irm.serving.schemas import ChatRequest, CompletionRequest


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


class Reply:
    """OpenAI's response and chunk objects for one request."""

    def __init__(self, layers_of: dict[str, list[int]], body: ChatRequest | CompletionRequest, job: Job, *, chat: bool) -> None:
        self.job = job
        self.chat = chat
        self.model = body.model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.include_usage = bool((body.stream_options or {}).get("include_usage"))
        route = job.route
        layers = layers_of.get(route.adapter or "", None)
        self.irm: dict[str, Any] = {
            "name": route.adapter,
            "strength": route.strength if route.adapter else 0.0,
            "layers": sorted(route.layers) if route.layers is not None else layers,
        }

    def _base(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: str, finish: str | None, *, delta: bool, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        content: dict[str, Any] = {"role": "assistant"} if role or not delta else {}
        if text or not delta:
            content["content"] = text
        return {"index": 0, ("delta" if delta else "message"): content, "logprobs": None, "finish_reason": finish}

    def usage(self) -> dict[str, int]:
        prompt, completion = len(self.job.prompt_ids), len(self.job.generated)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def first_chunk(self) -> dict[str, Any]:
        return {**self._base(True), "choices": [self._choice("", None, delta=True, role=True)], "irm": self.irm}

    def chunk(self, event: Event) -> dict[str, Any]:
        data = {**self._base(True), "choices": [self._choice(event.text, event.finish_reason, delta=True)]}
        if event.record is not None:
            data["irm_record"] = [event.record]
        return data

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._base(True), "choices": [], "usage": self.usage()}

    def whole(self, events: list[Event]) -> dict[str, Any]:
        text = self.job.stream.text if self.job.stream is not None else ""
        irm = dict(self.irm)
        if self.job.record != "off":
            irm["record"] = [e.record for e in events if e.record is not None]
        choice = self._choice(text, events[-1].finish_reason, delta=False)
        return {**self._base(False), "choices": [choice], "usage": self.usage(), "irm": irm}
