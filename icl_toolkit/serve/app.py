"""Thin FastAPI routes over :class:`~icl_toolkit.serve.service.PredictionService`.

Safe by default: the CLI binds 127.0.0.1; with ``ICL_API_KEY`` set, ``/v1/*``
needs ``Authorization: Bearer <key>`` (401 otherwise); bodies over the size
limit, requests with too many patients and requests whose cost (patients x k,
estimated prompt tokens) is over the limits get 413; invalid input gets 422
with field paths, by the same rules as a cohort file; a full queue or a
stopping server gets 503 with ``Retry-After``; a failed prediction gets 500 with
the request id and no stack trace. Every response carries ``X-Request-ID``; the
log has request ids, routes, statuses and timings, never patient data.

Request context (ids, auth, size limits, logging, the last-resort JSON 500) is a
plain ASGI middleware, so a client that goes away mid-body or mid-wait is a
one-line log entry, not a traceback, and the work it queued is dropped.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icl_toolkit.data.cohort import record_issues
from icl_toolkit.evaluation.monitor.log import FeedbackRejected, MonitorLog
from icl_toolkit.serve.schemas import (
    ErrorOut,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    Info,
    PredictRequest,
    PredictResponse,
)
from icl_toolkit.serve.service import Overloaded, PredictionService, ShuttingDown

__all__ = ["ServerSettings", "create_app", "make_server", "drain_seconds"]

log = logging.getLogger("icl.serve")


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None
    """Bearer token required on /v1/* (None: no auth)."""
    max_body_bytes: int = 8 << 20
    """Largest accepted request body."""
    max_patients: int = 64
    """Most patients in one request."""
    max_k: int = 16
    """Most demonstrations per patient a request may ask for (422 above)."""
    max_demos: int = 256
    """Most demonstrations in one request, patients x k (413 above)."""
    max_request_tokens: int = 200_000
    """Most prompt tokens one request may cost, estimated from the history budgets before any work (413 above)."""


class _BodyTooLarge(Exception):
    pass


def _error(status: int, request_id: str, error: str, detail: Any = None, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    body = ErrorOut(request_id=request_id, error=error, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)  # X-Request-ID: added by RequestContext


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validated(model: Any, body: bytes, rid: str) -> Any:
    """The request body as ``model`` (validated from the raw JSON), or a 422 response with field paths."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        detail = [{"field": _field(e["loc"]), "loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors(include_url=False, include_input=False)]
        return _error(422, rid, "invalid request", detail)


class RequestContext:
    """Plain ASGI middleware: request id, bearer auth on /v1/*, the body size limit (also for bodies without a
    Content-Length), one log line per request, and a JSON 500 with the request id for anything unexpected."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        path, method = scope.get("path", ""), scope.get("method", "")
        start = time.perf_counter()
        status: dict[str, int] = {}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        async def reply(response: Response) -> None:
            await response(scope, receive, send_with_id)

        limit = self.settings.max_body_bytes
        seen = {"bytes": 0}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > limit:
                    raise _BodyTooLarge()
            return message

        try:
            if path.startswith("/v1/") and self.settings.api_key:
                given = headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self.settings.api_key}".encode()):
                    await reply(_error(401, rid, "missing or wrong bearer token (Authorization: Bearer $ICL_API_KEY)"))
                    return
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                await reply(_error(413, rid, f"request body over {limit} bytes"))
                return
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            if "code" not in status:
                await reply(_error(413, rid, f"request body over {limit} bytes"))
        except ClientDisconnect:
            status.setdefault("code", 499)  # nginx's "client closed request"; nothing can be sent
        except Exception as exc:  # noqa: BLE001 - the last resort: a JSON 500 with the request id, no stack trace
            log.error("%s %s %s failed: %s", rid, method, path, type(exc).__name__)
            log.debug("%s traceback", rid, exc_info=True)
            if "code" not in status:
                await reply(_error(500, rid, "internal error; the server log has the details under this request id"))
        finally:
            log.info("%s %s %s %d %.1fms", rid, method, path, status.get("code", 499),
                     (time.perf_counter() - start) * 1000)


def create_app(load: Callable[[], PredictionService], settings: ServerSettings | None = None,
               *, info: Callable[[PredictionService], dict[str, Any]] | None = None,
               monitor: MonitorLog | None = None, card: dict[str, Any] | None = None) -> FastAPI:
    """The app. ``load`` builds the service (model, pool, index) in a background thread at start-up, so
    ``/health`` answers "loading" (503) until it is ready. ``app.state.begin_shutdown(seconds)`` (called by
    ``icl serve`` on SIGTERM) makes the service refuse new work and answer what is waiting within ``seconds``.
    With ``monitor``, every prediction is appended to its log and ``POST /v1/feedback`` records outcomes;
    ``card`` (owner, intended use, provenance, ...) is part of ``/v1/info``."""
    settings = settings or ServerSettings()
    state: dict[str, Any] = {"service": None, "status": "loading", "detail": None, "loop": None}

    def _load() -> None:
        try:
            state["service"] = load()
            state["status"] = "ready"
        except Exception as exc:  # noqa: BLE001 - reported by /health
            state["status"], state["detail"] = "failed", f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", state["detail"])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["loop"] = asyncio.get_running_loop()
        thread = threading.Thread(target=_load, name="icl-load", daemon=True)
        thread.start()

        async def start_when_ready() -> None:
            while state["status"] == "loading":
                await asyncio.sleep(0.05)
            if state["service"] is not None:
                await state["service"].start()
                state["started"] = True

        starter = asyncio.create_task(start_when_ready())
        yield
        starter.cancel()
        if state.get("started"):
            await state["service"].stop()

    app = FastAPI(title="icl-toolkit prompted predictor", version=_version(), lifespan=lifespan)
    app.add_middleware(RequestContext, settings=settings)

    def begin_shutdown(seconds: float) -> None:
        """Thread- and signal-safe: schedule the service's shutdown on its event loop."""
        state["status"] = "stopping"
        loop, service = state["loop"], state["service"]
        if loop is not None and service is not None and state.get("started"):
            loop.call_soon_threadsafe(service.begin_shutdown, seconds)

    app.state.begin_shutdown = begin_shutdown

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        ready = state["status"] == "ready" and state.get("started")
        status = "ready" if ready else ("loading" if state["status"] == "loading" else state["status"])
        return JSONResponse(Health(status=status, detail=state["detail"]).model_dump(exclude_none=True),
                            status_code=200 if ready else 503)

    @app.get("/v1/info", response_model=Info, responses={503: {"model": ErrorOut}})
    async def get_info(request: Request) -> Any:
        service = state["service"]
        if service is None:
            return _error(503, request.state.request_id, "not ready: the model and index are still loading")
        out = info(service) if info else default_info(service, settings)
        out.setdefault("model_card", card or {})
        if monitor is not None:
            out.setdefault("monitor", {"predictions_logged": len(monitor.known), "outcomes": len(monitor.outcomes)})
        return Info(**out)

    @app.post("/v1/predict", response_model=PredictResponse,
              responses={401: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut},
                         500: {"model": ErrorOut}, 503: {"model": ErrorOut}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/PredictRequest"}}}}})
    async def predict(request: Request) -> Any:
        rid = request.state.request_id
        service: PredictionService | None = state["service"]
        if service is not None and state.get("started") and service.queued >= service.batching.max_queue:
            service.refused += 1  # full: refuse before reading and validating the body, which costs CPU too
            return _error(503, rid, f"the server is busy ({service.queued} patients queued); retry later",
                          headers={"Retry-After": str(service.retry_after())})
        body = await request.body()  # ClientDisconnect / _BodyTooLarge are answered by RequestContext
        req = _validated(PredictRequest, body, rid)
        if isinstance(req, JSONResponse):
            return req
        # the cohort format's cross-field rules (onset date with label 1, onset after index, finite values, ...)
        raw = json.loads(body)["patients"]
        issues = [{"field": f"patients[{i}].{where}", "msg": what, "type": "cohort_rule"}
                  for i, p in enumerate(raw) for where, what in record_issues(p)]
        if issues:
            return _error(422, rid, "invalid request", issues)
        o, n = req.options, len(req.patients)
        if o.k > settings.max_k:
            return _error(422, rid, "invalid request", [{"field": "options.k", "type": "less_than_equal",
                                                         "msg": f"k is at most {settings.max_k} on this server"}])
        if n > settings.max_patients:
            return _error(413, rid, f"{n} patients in one request; the limit is {settings.max_patients}")
        if state["status"] == "stopping":
            return _error(503, rid, "the server is shutting down", headers={"Retry-After": "5"})
        if service is None or not state.get("started"):
            return _error(503, rid, "not ready: the model and index are still loading", headers={"Retry-After": "5"})
        k = service.spec(o).retrieval.k
        if n * k > settings.max_demos:
            return _error(413, rid, f"{n} patients x k={k} = {n * k} demonstrations in one request; the limit is "
                                    f"{settings.max_demos}. Send fewer patients per request or a smaller k.")
        tokens = service.request_tokens(n, o)
        if tokens > settings.max_request_tokens:
            return _error(413, rid, f"this request would score about {tokens} prompt tokens; the limit is "
                                    f"{settings.max_request_tokens}. Send fewer patients per request or a smaller k.")
        try:
            results = await _until_disconnect(request, service.predict(req.patients, o))
        except Overloaded as exc:
            return _error(503, rid, str(exc), headers={"Retry-After": str(exc.retry_after)})
        except ShuttingDown as exc:
            return _error(503, rid, str(exc), headers={"Retry-After": "5"})
        if results is None:  # the client went away: its queued patients were dropped, nobody to answer
            log.info("%s client disconnected while waiting; its queued patients were dropped", rid)
            return Response(status_code=499)
        failed = [r for r in results if isinstance(r, Exception)]
        if any(isinstance(r, ShuttingDown) for r in failed):
            return _error(503, rid, "the server is shutting down; this request was not (fully) scored",
                          headers={"Retry-After": "5"})
        if failed:
            log.error("%s prediction failed: %s", rid, type(failed[0]).__name__)
            return _error(500, rid, "prediction failed; the server log has the details under this request id")
        if monitor is not None:
            try:
                monitor.record_predictions(req.patients, results)
            except OSError as exc:  # the prediction stands; the gap in the log is reported
                log.error("%s monitor log write failed: %s", rid, exc)
        return JSONResponse(PredictResponse(request_id=rid, predictions=results).model_dump())

    @app.post("/v1/feedback", response_model=FeedbackResponse,
              responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut},
                         422: {"model": ErrorOut}, 501: {"model": ErrorOut}})
    async def feedback(request: Request) -> Any:
        """Outcomes as they become known: ``{"outcomes": [{"patient_id", "outcome": 0|1, "date"}]}``. All or
        nothing: an id this server never predicted is a 404, an outcome that contradicts one recorded before is
        a 409 (each naming the item); the same outcome sent again is counted as a duplicate and not written."""
        rid = request.state.request_id
        if monitor is None:
            return _error(501, rid, "this server keeps no monitor log; start icl serve with --monitor-dir DIR to "
                                    "take outcomes")
        body = await request.body()
        req = _validated(FeedbackRequest, body, rid)
        if isinstance(req, JSONResponse):
            return req
        try:
            done = monitor.record_outcomes([(o.patient_id, o.outcome, o.date) for o in req.outcomes])
        except FeedbackRejected as exc:
            if exc.unknown:
                return _error(404, rid, f"{len(exc.unknown)} outcome(s) for unknown patients; nothing was recorded",
                              [{"field": f"outcomes[{i}].patient_id", "msg": "no prediction of this patient is in "
                                "the monitor log (send outcomes for patients this server predicted)"}
                               for i in exc.unknown])
            return _error(409, rid, f"{len(exc.conflicts)} outcome(s) contradict recorded ones; nothing was "
                                    "recorded", [{"field": f"outcomes[{i}]", "msg": msg} for i, msg in exc.conflicts])
        return FeedbackResponse(request_id=rid, recorded=done.recorded, duplicates=done.duplicates)

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


def make_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                grace_seconds: float = 30.0, **config: Any) -> Any:
    """A uvicorn server for ``app`` whose SIGTERM (or SIGINT) handling first tells the service to refuse new work
    and to answer what is queued within :func:`drain_seconds`, then lets uvicorn close connections and exit
    within ``grace_seconds``."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.begin_shutdown(drain_seconds(grace_seconds))
            super().handle_exit(sig, frame)

    return GracefulServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                         timeout_graceful_shutdown=int(math.ceil(grace_seconds)), **config))


async def _until_disconnect(request: Request, work: Any, poll_s: float = 0.25) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (its queued patients are dropped) and
    return None."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                return None
    except asyncio.CancelledError:
        task.cancel()
        raise


def default_info(service: PredictionService, settings: ServerSettings) -> dict[str, Any]:
    meta = dict(service.index.meta) if service.index is not None else {}
    limits = asdict(settings)
    limits.pop("api_key")
    limits["max_queue"] = service.batching.max_queue
    return {"version": _version(), "model_id": service.backend.model_id,
            "backend": type(service.backend).__name__, "max_context": service.backend.max_context,
            "index": meta, "pool_size": len(service.pool), "limits": limits,
            "batching": {"enabled": service.batching.enabled, "max_batch": service.batching.max_batch,
                         "max_wait_ms": service.batching.max_wait_ms},
            "queue": {"queued": service.queued, "dropped": service.dropped, "refused": service.refused,
                      "seconds_per_patient": round(service.seconds_per_patient, 4)}}


def _version() -> str:
    from icl_toolkit.core import __version__

    return __version__
