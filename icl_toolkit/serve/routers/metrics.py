"""``GET /metrics``: the server's operational metrics in Prometheus' text format (:mod:`~icl_toolkit.serve.metrics`);
it needs the bearer token only with ``--metrics-auth``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from icl_toolkit.serve.state import server_state

router = APIRouter()


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    state = server_state(request)
    body = state.metrics.exposition() if state.metrics is not None else b""
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
