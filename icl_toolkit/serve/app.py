"""Thin FastAPI routes over :class:`~icl_toolkit.serve.service.PredictionService`.

Safe by default: the CLI binds 127.0.0.1; with ``ICL_API_KEY`` set, ``/v1/*``
needs ``Authorization: Bearer <key>`` (401 otherwise); bodies over the size
limit and requests with too many patients get 413; invalid input gets 422 with
field paths; a failed prediction gets 500 with the request id and no stack
trace. Every response carries ``X-Request-ID``; the log has request ids, routes,
statuses and timings, never patient data.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from icl_toolkit.serve.schemas import ErrorOut, Health, Info, PredictRequest, PredictResponse
from icl_toolkit.serve.service import PredictionService

__all__ = ["ServerSettings", "create_app"]

log = logging.getLogger("icl.serve")


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None
    """Bearer token required on /v1/* (None: no auth)."""
    max_body_bytes: int = 8 << 20
    """Largest accepted request body."""
    max_patients: int = 64
    """Most patients in one request."""


def _error(status: int, request_id: str, error: str, detail: Any = None) -> JSONResponse:
    body = ErrorOut(request_id=request_id, error=error, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers={"X-Request-ID": request_id})


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def create_app(load: Callable[[], PredictionService], settings: ServerSettings | None = None,
               *, info: Callable[[PredictionService], dict[str, Any]] | None = None) -> FastAPI:
    """The app. ``load`` builds the service (model, pool, index) in a background thread at start-up, so
    ``/health`` answers "loading" (503) until it is ready."""
    settings = settings or ServerSettings()
    state: dict[str, Any] = {"service": None, "status": "loading", "detail": None}

    def _load() -> None:
        try:
            state["service"] = load()
            state["status"] = "ready"
        except Exception as exc:  # noqa: BLE001 - reported by /health
            state["status"], state["detail"] = "failed", f"{type(exc).__name__}: {exc}"
            log.error("loading failed: %s", state["detail"])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

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
            await state["service"].stop()  # finish what is queued

    app = FastAPI(title="icl-toolkit prompted predictor", version=_version(), lifespan=lifespan)

    @app.middleware("http")
    async def request_context(request: Request, call_next):
        rid = uuid.uuid4().hex[:16]
        request.state.request_id = rid
        start = time.perf_counter()
        if request.url.path.startswith("/v1/") and settings.api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                log.info("%s %s %s 401 %.1fms", rid, request.method, request.url.path, 0.0)
                return _error(401, rid, "missing or wrong bearer token (Authorization: Bearer $ICL_API_KEY)")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return _error(413, rid, f"request body over {settings.max_body_bytes} bytes")
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        log.info("%s %s %s %d %.1fms", rid, request.method, request.url.path, response.status_code,
                 (time.perf_counter() - start) * 1000)
        return response

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        ready = state["status"] == "ready" and state.get("started")
        status = "ready" if ready else ("failed" if state["status"] == "failed" else "loading")
        return JSONResponse(Health(status=status, detail=state["detail"]).model_dump(exclude_none=True),
                            status_code=200 if ready else 503)

    @app.get("/v1/info", response_model=Info, responses={503: {"model": ErrorOut}})
    async def get_info(request: Request) -> Any:
        service = state["service"]
        if service is None:
            return _error(503, request.state.request_id, "not ready: the model and index are still loading")
        return Info(**(info(service) if info else default_info(service, settings)))

    @app.post("/v1/predict", response_model=PredictResponse,
              responses={401: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut},
                         500: {"model": ErrorOut}, 503: {"model": ErrorOut}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/PredictRequest"}}}}})
    async def predict(request: Request) -> Any:
        rid = request.state.request_id
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            return _error(413, rid, f"request body over {settings.max_body_bytes} bytes")
        try:
            req = PredictRequest.model_validate_json(body)
        except ValidationError as exc:
            detail = [{"field": _field(e["loc"]), "loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                      for e in exc.errors(include_url=False, include_input=False)]
            return _error(422, rid, "invalid request", detail)
        if len(req.patients) > settings.max_patients:
            return _error(413, rid, f"{len(req.patients)} patients in one request; the limit is "
                                    f"{settings.max_patients}")
        service = state["service"]
        if service is None or not state.get("started"):
            return _error(503, rid, "not ready: the model and index are still loading")
        results = await service.predict(req.patients, req.options)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            log.error("%s prediction failed: %s", rid, type(failed[0]).__name__)
            return _error(500, rid, "prediction failed; the server log has the details under this request id")
        return JSONResponse(PredictResponse(request_id=rid, predictions=results).model_dump(),
                            headers={"X-Request-ID": rid})

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


def default_info(service: PredictionService, settings: ServerSettings) -> dict[str, Any]:
    meta = dict(service.index.meta) if service.index is not None else {}
    return {"version": _version(), "model_id": service.backend.model_id,
            "backend": type(service.backend).__name__, "max_context": service.backend.max_context,
            "index": meta, "pool_size": len(service.pool),
            "limits": {"max_patients": settings.max_patients, "max_body_bytes": settings.max_body_bytes},
            "batching": {"enabled": service.batching.enabled, "max_batch": service.batching.max_batch,
                         "max_wait_ms": service.batching.max_wait_ms}}


def _version() -> str:
    from icl_toolkit import __version__

    return __version__
