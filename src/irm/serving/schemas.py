"""Request bodies of the OpenAI-compatible endpoints, and OpenAI-style error bodies.

Fields OpenAI defines and this server does not use are accepted and ignored (clients send
them); the IRM fields come in ``extra_body``: ``irm`` (a name from ``irm serve --irm``),
``irm_strength``, ``irm_layers`` (``"0-7"`` or a list) and ``irm_record`` (``true`` for the
norm and top indices of the IRM output per generated token, ``"map"`` for the whole
layer x hidden map too).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status, as OpenAI does."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind or _KINDS.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, code=self.code, param=self.param)


_KINDS = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


def error_body(message: str, *, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "echo": (False,),
    "best_of": (1,),
    "tools": ([],),
    "functions": ([],),
    "response_format": ({"type": "text"},),
    "suffix": ("",),
}
"""OpenAI parameters this server does not implement, with the values that ask for nothing."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    irm: str | None = None
    irm_strength: float = Field(1.0, allow_inf_nan=False)
    irm_layers: str | list[int] | None = None
    irm_record: bool | Literal["map"] = False

    def check_supported(self) -> None:
        """Refuse what OpenAI's API offers and this server does not do, rather than ignore it."""
        extra = self.model_extra or {}
        for name, harmless in UNSUPPORTED.items():
            value = extra.get(name)
            if value is not None and not any(type(value) is type(h) and value == h for h in harmless):
                raise ApiError(400, f"{name} is not supported by irm serve", param=name, code="unsupported_parameter")

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "at most 4 stop sequences", param="stop")
        return tuple(s for s in stops if s)

    def limit(self) -> int | None:
        return self.max_tokens


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.type != "text" for part in self.content):
            raise ApiError(400, "only text content parts are supported", param="messages")
        return "".join(part.text or "" for part in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ApiError(400, "one prompt per request", param="prompt")
        return self.prompt[0]
