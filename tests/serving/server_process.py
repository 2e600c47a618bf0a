"""Start `irm serve` as a real process on 127.0.0.1 and a random free port, for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = "import sys; from irm.cli import main; sys.argv[0] = 'irm'; main()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def irm_server(args: list[str], log: Path, *, timeout: float = 90):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "serve", "--port", str(port), *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(proc, port, log)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"irm serve exited with {proc.returncode}:\n{server.output()}")
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"irm serve did not start:\n{server.output()}") from None
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
