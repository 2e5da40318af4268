"""Start ``icl serve`` as a child process on a free loopback port and wait until it is healthy.

For scripts that drive a real server over HTTP (the load benchmark, the monitoring demo, the end-to-end tests)::

    server = start_local_server(["--pool", "train.jsonl", "--query-tokens", "160"])
    try:
        httpx.post(server.base + "/v1/predict", json=...)
    finally:
        server.stop()
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from icl_toolkit.core.errors import IclError

HOST = "127.0.0.1"


class ServerStartError(IclError, RuntimeError):
    """The server exited, or did not answer ``/health`` in time; the message carries its output's tail."""


def free_port(host: str = HOST) -> int:
    """A TCP port the OS has just handed out as free on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """A running ``icl serve`` child: its process, base URL (``http://127.0.0.1:PORT``) and captured output."""

    process: subprocess.Popen
    base: str
    log: IO[str] | None = None

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far (empty when not captured)."""
        if self.log is None:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout_s: float = 60.0) -> int:
        """Ask the server to shut down (SIGTERM: requests in flight are answered), kill it after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_healthy(base: str, alive: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Return once ``base/health`` answers 200.

    Raises:
        ServerStartError: ``alive()`` turned false (the server stopped) or ``timeout_s`` passed first.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise ServerStartError(f"the server at {base} stopped before it was healthy")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise ServerStartError(f"the server at {base} was not healthy after {timeout_s:.0f} s")


def start_local_server(
    args: Sequence[str], *, timeout_s: float = 600.0, env: Mapping[str, str] | None = None, capture_output: bool = True
) -> LocalServer:
    """Run ``icl serve ARGS --host 127.0.0.1 --port <free>`` and return once ``/health`` answers 200.

    Args:
        args: ``icl serve`` options (without ``--host``/``--port``).
        timeout_s: how long model loading may take.
        env: the child's environment (this process's by default).
        capture_output: keep the server's stdout and stderr in a temporary file (:meth:`LocalServer.output`;
            a file, not a pipe, so a chatty server never blocks on a full pipe); ``False`` lets them through to
            this console.

    Raises:
        ServerStartError: the server exited before it was healthy, or was not healthy within ``timeout_s``
            (it is killed then); the message ends with the tail of its output.
    """
    port = free_port()
    icl = Path(sys.executable).parent / "icl"
    log = tempfile.TemporaryFile("w+", encoding="utf-8") if capture_output else None
    process = subprocess.Popen(
        [str(icl), "serve", *args, "--host", HOST, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT if capture_output else None,
        text=True,
        env=dict(env) if env is not None else None,
    )
    server = LocalServer(process, f"http://{HOST}:{port}", log)
    try:
        wait_healthy(server.base, lambda: process.poll() is None, timeout_s)
    except ServerStartError as exc:
        server.stop(timeout_s=5)
        tail = server.output()[-2000:] if capture_output else "(its output is above)"
        raise ServerStartError(
            f"icl serve {' '.join(args)}: {exc} (exit status {process.returncode}): {tail}"
        ) from None
    return server
