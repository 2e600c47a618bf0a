"""The FastAPI application of ``irm serve``: OpenAI's chat and completion endpoints (plain
JSON or server-sent events in OpenAI's chunk format), the model list, health, Prometheus
metrics and the playground page.

Models are the host (``HOST``) and one ``HOST+NAME`` per IRM; a request may also pick the
IRM with ``extra_body={"irm": NAME}``. Errors are OpenAI-style bodies: 400 for a request
that cannot be served (prompt too long for the context, bad layers ...), 404 for an unknown
model, IRM or path, 422 for a body that does not fit the schema, 429 when the queue is
full, 401 without the API key.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from irm.core.layers import parse_layers
from irm.core.routing import Route
from irm.data.prompts import conversation_ids, text_ids
from irm.errors import IRMError
from irm.serving.engine import Engine, QueueFull
from irm.serving.jobs import Event, Job, Sampling
from irm.serving.metrics import ServerMetrics
from irm.serving.replies import Reply, sse
from irm.serving.schemas import ApiError, ChatRequest, CompletionRequest, error_body

ENDPOINTS = (
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/assets/heatmap.js",
    "/assets/heatmap.css",
)
DISCONNECT_POLL_S = 0.25
Body = TypeVar("Body", ChatRequest, CompletionRequest)


@dataclass
class ServerState:
    engine: Engine
    metrics: ServerMetrics
    api_key: str | None = None
    default_max_tokens: int = 256

    @property
    def host_id(self) -> str:
        return self.engine.host.name


# ---------------------------------------------------------------------- middleware
class Gatekeeper:
    """Counts every answer by endpoint and status, and requires the API key (when set) on
    every path but ``/health``. Plain ASGI, so streaming responses pass through untouched."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.state.metrics.requests.labels(endpoint=endpoint, status=str(message["status"])).inc()
            await send(message)

        if self.state.api_key is not None and path != "/health" and not self._authorized(scope):
            body = error_body(
                "missing or wrong API key: send 'Authorization: Bearer KEY'", kind="authentication_error", code="invalid_api_key"
            )
            await JSONResponse(body, status_code=401)(scope, receive, counted)
            return
        await self.app(scope, receive, counted)

    def _authorized(self, scope: Scope) -> bool:
        assert self.state.api_key is not None
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        return secrets.compare_digest(given.encode(), f"Bearer {self.state.api_key}".encode())


# ---------------------------------------------------------------------- the app
def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.engine.stop)

    app = FastAPI(title="irm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Gatekeeper, state=state)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "host": state.host_id, "active": state.engine.active, "waiting": state.engine.waiting}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = int(time.time())
        data = [{"id": state.host_id, "object": "model", "created": created, "owned_by": "irm", "irm": None}]
        for name, layers in state.engine.layers.items():
            data.append(
                {"id": f"{state.host_id}+{name}", "object": "model", "created": created, "owned_by": "irm", "irm": name, "layers": layers}
            )
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await _parse(request, ChatRequest)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            ids = conversation_ids(state.engine.tokenizer, messages)
        except IRMError as exc:
            raise ApiError(400, exc.message, param="messages") from None
        return await _serve(state, body, ids, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _parse(request, CompletionRequest)
        return await _serve(state, body, text_ids(state.engine.tokenizer, body.text()), request, chat=False)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(_asset("serving", "playground.html"))

    @app.get("/assets/heatmap.js")
    async def heatmap_js() -> Response:
        return Response(_asset("report", "heatmap.js"), media_type="text/javascript")

    @app.get("/assets/heatmap.css")
    async def heatmap_css() -> Response:
        return Response(_asset("report", "heatmap.css"), media_type="text/css")

    return app


async def _parse(request: Request, schema: type[Body]) -> Body:
    """The request body as ``schema``, whatever its content type says (as OpenAI's API)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _asset(package: str, name: str) -> str:
    return resources.files(f"irm.{package}").joinpath("assets", name).read_text(encoding="utf-8")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors)
        return JSONResponse(error_body(message, param=param, code="invalid_value"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {exc.detail}", kind=kind), status_code=exc.status_code)


# ---------------------------------------------------------------------- one request
def _route(state: ServerState, body: ChatRequest | CompletionRequest) -> Route:
    host = state.host_id
    by_model: str | None = None
    if body.model.startswith(host + "+"):
        by_model = body.model[len(host) + 1 :]
        if by_model not in state.engine.layers:
            raise ApiError(404, f"the model {body.model!r} does not exist", code="model_not_found", param="model")
    elif body.model != host:
        raise ApiError(404, f"the model {body.model!r} does not exist (see GET /v1/models)", code="model_not_found", param="model")
    by_extra = None if body.irm is None or body.irm.lower() == "none" else body.irm
    if by_model and by_extra and by_model != by_extra:
        raise ApiError(400, f"the model names IRM {by_model!r} but irm is {by_extra!r}", param="irm")
    name = by_model or by_extra
    if name is not None and name not in state.engine.layers:
        known = ", ".join(sorted(state.engine.layers)) or "none"
        raise ApiError(404, f"unknown IRM {name!r} (served: {known})", code="irm_not_found", param="irm")
    layers = None
    if body.irm_layers is not None:
        if name is None:
            raise ApiError(400, "irm_layers needs an IRM", param="irm_layers")
        try:
            layers = frozenset(parse_layers(body.irm_layers, state.engine.host.num_layers))
            state.engine.router.check(Route(name, body.irm_strength, layers))
        except IRMError as exc:
            raise ApiError(400, exc.message, param="irm_layers") from None
    return Route(name, body.irm_strength, layers, record=bool(body.irm_record) and name is not None)


def _job(state: ServerState, body: ChatRequest | CompletionRequest, ids: list[int]) -> Job:
    body.check_supported()
    route = _route(state, body)
    context = state.engine.host.context_length or 2**31
    room = context - len(ids)
    asked = body.limit()
    if room < 1 or (asked is not None and asked > room):
        want = f" + max_tokens {asked}" if asked is not None else ""
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens{want}; the host's context is {context} tokens",
            code="context_length_exceeded",
            param="messages" if isinstance(body, ChatRequest) else "prompt",
        )
    if not ids:
        raise ApiError(400, "the prompt is empty", param="prompt")
    sampling = Sampling(
        max_tokens=asked if asked is not None else min(room, state.default_max_tokens),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
    )
    record = "off" if not body.irm_record else ("map" if body.irm_record == "map" else "top")
    return Job(list(ids), route, sampling, sink=lambda event: None, record=record)


async def _serve(state: ServerState, body: ChatRequest | CompletionRequest, ids: list[int], request: Request, *, chat: bool) -> Response:
    job = _job(state, body, ids)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def deliver(event: Event) -> None:  # called on the engine's thread
        loop.call_soon_threadsafe(queue.put_nowait, event)

    job.sink = deliver
    try:
        state.engine.submit(job)
    except QueueFull as exc:
        raise ApiError(429, exc.message, code="queue_full") from None
    reply = Reply(state.engine.layers, body, job, chat=chat)
    if body.stream:
        return StreamingResponse(_stream(state, job, queue, reply), media_type="text/event-stream")
    events: list[Event] = []
    checked = time.monotonic()
    try:
        while not events or events[-1].finish_reason is None:
            try:
                events.append(await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S))
            except TimeoutError:
                pass
            if time.monotonic() - checked >= DISCONNECT_POLL_S:  # tokens may arrive faster than that
                checked = time.monotonic()
                if await request.is_disconnected():
                    state.engine.cancel(job)
                    return Response(status_code=499)
    finally:
        if job.finish_reason is None:
            state.engine.cancel(job)
    if events[-1].error is not None:
        raise ApiError(500, f"generation failed: {events[-1].error}", code="server_error")
    return JSONResponse(reply.whole(events))


async def _stream(state: ServerState, job: Job, queue: asyncio.Queue[Event], reply: Reply) -> AsyncIterator[str]:
    try:
        yield sse(reply.first_chunk())
        while True:
            event = await queue.get()
            if event.error is not None:
                yield sse(error_body(f"generation failed: {event.error}", kind="server_error"))
                break
            if event.text or event.record is not None or event.finish_reason is not None:
                yield sse(reply.chunk(event))
            if event.finish_reason is not None:
                if reply.include_usage:
                    yield sse(reply.usage_chunk())
                break
        yield "data: [DONE]\n\n"
    finally:
        if job.finish_reason is None:  # the client went away: free the slot now
            state.engine.cancel(job)
