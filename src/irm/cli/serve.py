"""`irm serve`: an OpenAI-compatible server with per-request IRM and strength."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from irm.cli.options import DEFAULT_HOST, DeviceOpt, ForceOpt, HostOpt, err_console
from irm.errors import IRMError


def parse_irm_option(value: str) -> tuple[str, str]:
    """``NAME=DIR`` -> (name, dir); the name is what clients choose the IRM by."""
    name, sep, directory = value.partition("=")
    name = name.strip()
    if not sep or not name or not directory.strip():
        raise IRMError(f"--irm {value!r}: expected NAME=DIR", hint="e.g. --irm anger=runs/anger/irm")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise IRMError(f"--irm {value!r}: the name may hold letters, digits, '-', '_' and '.'", hint="e.g. --irm anger=runs/anger/irm")
    return name, directory.strip()


def serve(
    host: HostOpt = DEFAULT_HOST,
    irm: Annotated[
        Optional[list[str]], typer.Option("--irm", help="NAME=DIR of an IRM or steering vector to serve; repeat for more.")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    bind: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps the server to this machine.")] = "127.0.0.1",
    api_key: Annotated[
        str, typer.Option(envvar="IRM_API_KEY", help="Require 'Authorization: Bearer KEY' on every endpoint but /health.")
    ] = "",
    max_batch: Annotated[int, typer.Option(min=1, max=256, help="Requests decoded together in one batched forward pass.")] = 8,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests that may wait for a slot; more are answered 429.")] = 64,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated when a request does not say max_tokens.")] = 256,
    drain_timeout: Annotated[int, typer.Option(min=1, help="On SIGTERM or Ctrl-C, seconds to let running requests finish.")] = 60,
    force: ForceOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the host and its IRMs with OpenAI's API, batching concurrent requests.

    Each request picks its IRM by model id (HOST+NAME, see GET /v1/models) or with
    extra_body={"irm": NAME, "irm_strength": 1.5, "irm_layers": "0-7", "irm_record": true};
    requests with different IRMs and strengths are decoded in the same batch. The
    playground (prompt, IRM, strength slider, live heatmap) is at http://BIND:PORT/.

    Example: irm serve --irm anger=runs/anger/irm --port 8000
    then: curl http://127.0.0.1:8000/v1/chat/completions -d '{"model": "smollm2-135m-instruct+anger", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    import uvicorn

    from irm.core.adapters import load_adapter
    from irm.hosts.loading import load_host
    from irm.serving.app import ServerState, create_app
    from irm.serving.engine import Engine
    from irm.serving.metrics import ServerMetrics

    check_port_free(bind, port)
    named = [parse_irm_option(v) for v in irm or []]
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise IRMError(f"--irm names must differ, got {names}", hint="give each IRM its own NAME")
    loaded_host = load_host(host, device=device)
    adapters = {name: load_adapter(d, loaded_host, check_host=not force, device=loaded_host.device) for name, d in named}
    metrics = ServerMetrics(max_batch)
    engine = Engine(loaded_host, adapters, max_batch=max_batch, max_queue=max_queue, metrics=metrics)
    state = ServerState(engine, metrics, api_key=api_key or None, default_max_tokens=max_tokens)
    config = uvicorn.Config(create_app(state), host=bind, port=port, log_level="warning", timeout_graceful_shutdown=drain_timeout)
    err_console.print(f"irm serve: {loaded_host.name} with {', '.join(names) or 'no IRM'} on http://{bind}:{port}/", highlight=False)
    server = uvicorn.Server(config)
    server.run()


def check_port_free(bind: str, port: int) -> None:
    """Refuse, before the model loads, an address this process cannot listen on."""
    import socket

    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise IRMError(f"--bind {bind}: not an address of this machine ({exc.strerror})", hint="e.g. --bind 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise IRMError(f"cannot listen on {bind}:{port}: {exc.strerror}", hint="choose another --port, or stop what uses it") from None
