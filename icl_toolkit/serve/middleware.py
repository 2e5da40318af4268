"""Request context as a plain ASGI middleware: a request id on every response, bearer auth on ``/v1/*``, the body
size limit (also for bodies without a Content-Length), one log line per request (ids, routes, statuses and timings,
never patient data) and its Prometheus counts, and a JSON 500 with the request id for anything unexpected. A client that goes away mid-body
or mid-wait is a one-line log entry, not a traceback."""

from __future__ import annotations

import hmac
import logging
import time
import uuid

from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icl_toolkit.serve.config import ServerSettings
from icl_toolkit.serve.errors import error_response
from icl_toolkit.serve.metrics import ServerMetrics

__all__ = ["RequestContext"]

log = logging.getLogger("icl.serve")
_QUIET = frozenset({"/metrics", "/health"})


class _BodyTooLarge(Exception):
    pass


class RequestContext:
    """Plain ASGI middleware: request id, bearer auth on /v1/*, the body size limit (also for bodies without a
    Content-Length), one log line per request, and a JSON 500 with the request id for anything unexpected."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

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
            guarded = path.startswith("/v1/") or (path == "/metrics" and self.settings.metrics_auth)
            if guarded and self.settings.api_key:
                given = headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self.settings.api_key}".encode()):
                    await reply(
                        error_response(401, rid, "missing or wrong bearer token (Authorization: Bearer $ICL_API_KEY)")
                    )
                    return
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                await reply(error_response(413, rid, f"request body over {limit} bytes"))
                return
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            if "code" not in status:
                await reply(error_response(413, rid, f"request body over {limit} bytes"))
        except ClientDisconnect:
            status.setdefault("code", 499)  # nginx's "client closed request"; nothing can be sent
        except Exception as exc:  # noqa: BLE001 - the last resort: a JSON 500 with the request id, no stack trace
            log.error("%s %s %s failed: %s", rid, method, path, type(exc).__name__)
            log.debug("%s traceback", rid, exc_info=True)
            if "code" not in status:
                await reply(
                    error_response(500, rid, "internal error; the server log has the details under this request id")
                )
        finally:
            seconds = time.perf_counter() - start
            # scrapes and health probes (every few seconds, forever) are logged at debug level, requests at info
            level = logging.DEBUG if path in _QUIET else logging.INFO
            log.log(level, "%s %s %s %d %.1fms", rid, method, path, status.get("code", 499), seconds * 1000)
            if self.metrics is not None:
                self.metrics.observe_request(path, method, status.get("code", 499), seconds)
