"""The application state every route reads (``app.state.icl``): the service once loaded, its status, the settings,
the monitor log and the model card, typed, in one place instead of a dict shared by closures."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request

from icl_toolkit.evaluation.monitor.log import MonitorLog
from icl_toolkit.serve.config import ServerSettings
from icl_toolkit.serve.metrics import ServerMetrics
from icl_toolkit.serve.service import PredictionService

__all__ = ["ServerState", "server_state"]

log = logging.getLogger("icl.serve")

Status = Literal["loading", "ready", "failed", "stopping"]


@dataclass
class ServerState:
    """What the routes share.

    Args:
        load: builds the service (model, pool, index); run in a background thread at start-up, so ``/health``
            answers "loading" (503) until it is ready.
        settings: request limits and authentication.
        monitor: the monitor log (every prediction logged, outcomes taken on ``/v1/feedback``), or ``None``.
        card: the model card's fields and provenance, shown in ``/v1/info``.
        info: builds ``/v1/info`` from the service instead of the default (tests, embedding applications).
        metrics: the app's Prometheus metrics (``GET /metrics``).
    """

    load: Callable[[], PredictionService]
    settings: ServerSettings
    monitor: MonitorLog | None = None
    card: dict[str, Any] = field(default_factory=dict)
    info: Callable[[PredictionService], dict[str, Any]] | None = None
    metrics: ServerMetrics | None = None
    service: PredictionService | None = None
    status: Status = "loading"
    detail: str | None = None
    started: bool = False
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        """Loaded, started and not stopping: new work is taken."""
        return self.status == "ready" and self.started

    def count_monitor_write(self, kind: str, ok: bool) -> None:
        """Count one monitor log write (``predictions`` or ``outcomes``) in the metrics."""
        if self.metrics is not None:
            self.metrics.monitor_writes.labels(kind, "ok" if ok else "failed").inc()

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            service = self.load()
            if self.metrics is not None:
                self.metrics.model_load.set(time.perf_counter() - start)
                service.batch_observer = self.metrics.observe_batch
            self.service = service
            if self.monitor is not None:
                self._write_reference(service)
            self.status = "ready"
        except Exception as exc:  # noqa: BLE001 - reported by /health
            self.status, self.detail = "failed", f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", self.detail)

    def _write_reference(self, service: PredictionService) -> None:
        try:
            path = self.monitor.write_reference(service.monitor_reference())  # type: ignore[union-attr]
            log.info("monitor reference written to %s", path)
        except Exception as exc:  # noqa: BLE001 - the service still serves; icl monitor falls back to the first window
            log.error("writing the monitor reference failed: %s: %s", type(exc).__name__, exc)

    async def start(self) -> None:
        """Load the service in a thread; start its batch worker in this event loop when it is ready."""
        self.loop = asyncio.get_running_loop()
        threading.Thread(target=self._load, name="icl-load", daemon=True).start()
        while self.status == "loading":
            await asyncio.sleep(0.05)
        if self.service is not None and self.status == "ready":
            await self.service.start()
            self.started = True

    async def stop(self) -> None:
        if self.started and self.service is not None:
            await self.service.stop()

    def begin_shutdown(self, seconds: float) -> None:
        """Thread- and signal-safe: refuse new work and schedule the service's shutdown within ``seconds``."""
        self.status = "stopping"
        if self.loop is not None and self.service is not None and self.started:
            self.loop.call_soon_threadsafe(self.service.begin_shutdown, seconds)


def server_state(request: Request) -> ServerState:
    """The state of the app serving ``request``."""
    state: ServerState = request.app.state.icl
    return state
