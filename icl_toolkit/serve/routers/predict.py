"""``POST /v1/predict``: one or many patients in the cohort schema, answered with ``icl predict``'s records.

The route reads the body, validates it, and hands it to the service layer: :func:`~icl_toolkit.serve.service.admit`
checks the cohort rules, the per-request limits and the server's state; :func:`~icl_toolkit.serve.service.answer`
queues the patients with concurrent requests' and waits, dropping them when the client goes away."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from icl_toolkit.serve.errors import Rejected, parse_body
from icl_toolkit.serve.schemas import ErrorOut, PredictRequest, PredictResponse
from icl_toolkit.serve.service import admit, answer
from icl_toolkit.serve.state import server_state

router = APIRouter()
log = logging.getLogger("icl.serve")

ERRORS = {code: {"model": ErrorOut} for code in (401, 413, 422, 500, 503)}


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    responses=ERRORS,  # type: ignore[arg-type]
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        }
    },
)
async def predict(request: Request) -> Any:
    state = server_state(request)
    rid = request.state.request_id
    try:
        if state.service is not None and state.started:
            state.service.refuse_if_full()
        body = await request.body()  # ClientDisconnect / a body over the limit: answered by RequestContext
        req = parse_body(PredictRequest, body)
        service = admit(req, body, state.settings, state.service, state.ready, state.status == "stopping")
        results = await answer(service, req, request.is_disconnected, rid)
    except Rejected as exc:
        return exc.response(rid)
    if results is None:  # the client went away: its queued patients were dropped, nobody to answer
        return Response(status_code=499)
    if state.metrics is not None:
        state.metrics.observe_predictions(results)
    if state.monitor is not None:
        try:
            state.monitor.record_predictions(req.patients, results)
            state.count_monitor_write("predictions", ok=True)
        except OSError as exc:  # the prediction stands; the gap in the log is reported
            log.error("%s monitor log write failed: %s", rid, exc)
            state.count_monitor_write("predictions", ok=False)
    return JSONResponse(PredictResponse(request_id=rid, predictions=results).model_dump())
