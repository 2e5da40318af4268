"""The ``icl serve`` application: a small factory over the routers, and a graceful uvicorn server.

Safe by default: the CLI binds 127.0.0.1; with ``ICL_API_KEY`` set, ``/v1/*`` needs ``Authorization: Bearer
<key>`` (401 otherwise); bodies over the size limit, requests with too many patients and requests whose cost
(patients x k, estimated prompt tokens) is over the limits get 413; invalid input gets 422 with field paths, by the
same rules as a cohort file; a full queue or a stopping server gets 503 with ``Retry-After``; a failed prediction
gets 500 with the request id and no stack trace. Every response carries ``X-Request-ID``. ``GET /metrics`` gives
the operational metrics in Prometheus' format (:mod:`~icl_toolkit.serve.metrics`).

Layout (as vLLM's entrypoints): :mod:`~icl_toolkit.serve.config` (settings), :mod:`~icl_toolkit.serve.schemas`
(requests and responses), :mod:`~icl_toolkit.serve.service` (the predictor, the micro-batcher, request admission),
:mod:`~icl_toolkit.serve.state` (the typed state routes read), :mod:`~icl_toolkit.serve.middleware` (request
context), :mod:`~icl_toolkit.serve.routers` (one router per feature).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from icl_toolkit.core import __version__
from icl_toolkit.evaluation.monitor.log import MonitorLog
from icl_toolkit.serve.config import ServerSettings
from icl_toolkit.serve.metrics import ServerMetrics
from icl_toolkit.serve.middleware import RequestContext
from icl_toolkit.serve.routers import ROUTERS
from icl_toolkit.serve.schemas import PredictRequest
from icl_toolkit.serve.service import PredictionService
from icl_toolkit.serve.state import ServerState

__all__ = ["ServerSettings", "create_app", "make_server", "drain_seconds"]


def create_app(
    load: Callable[[], PredictionService],
    settings: ServerSettings | None = None,
    *,
    info: Callable[[PredictionService], dict[str, Any]] | None = None,
    monitor: MonitorLog | None = None,
    card: dict[str, Any] | None = None,
) -> FastAPI:
    """The app.

    Args:
        load: builds the service (model, pool, index), in a background thread at start-up, so ``/health`` answers
            "loading" (503) until it is ready.
        settings: request limits and authentication.
        info: builds ``/v1/info`` instead of the default.
        monitor: log every prediction there and take outcomes on ``POST /v1/feedback``.
        card: the model card (owner, intended use, provenance, ...), part of ``/v1/info``.

    Returns:
        The FastAPI app; ``app.state.icl`` is its :class:`~icl_toolkit.serve.state.ServerState`, and
        ``app.state.begin_shutdown(seconds)`` (called by ``icl serve`` on SIGTERM) makes the service refuse new
        work and answer what is waiting within ``seconds``.
    """
    state = ServerState(load, settings or ServerSettings(), monitor, card or {}, info)
    state.metrics = ServerMetrics(lambda: state.service if state.ready else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starter = asyncio.create_task(state.start())
        yield
        starter.cancel()
        await state.stop()

    app = FastAPI(title="icl-toolkit prompted predictor", version=__version__, lifespan=lifespan)
    app.add_middleware(RequestContext, settings=state.settings, metrics=state.metrics)
    app.state.icl = state
    app.state.begin_shutdown = state.begin_shutdown
    for router in ROUTERS:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        defs = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["PredictRequest"] = defs
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def drain_seconds(grace_seconds: float) -> float:
    """How long after SIGTERM queued work may still start: about half the grace period (at most 15 s short of
    it), so the batch in progress can finish and every request is answered before uvicorn's deadline."""
    return max(grace_seconds * 0.5, grace_seconds - 15.0)


def make_server(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    grace_seconds: float = 30.0,
    **config: Any,
) -> Any:
    """A uvicorn server for ``app`` whose SIGTERM (or SIGINT) handling first tells the service to refuse new work
    and to answer what is queued within :func:`drain_seconds`, then lets uvicorn close connections and exit
    within ``grace_seconds``."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.begin_shutdown(drain_seconds(grace_seconds))
            super().handle_exit(sig, frame)

    return GracefulServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            timeout_graceful_shutdown=int(math.ceil(grace_seconds)),
            **config,
        )
    )
