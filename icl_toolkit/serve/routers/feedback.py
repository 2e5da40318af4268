"""``POST /v1/feedback``: outcomes as they become known, ``{"outcomes": [{"patient_id", "outcome": 0|1, "date"}]}``,
recorded in the monitor log all or nothing (:meth:`~icl_toolkit.evaluation.monitor.log.MonitorLog.record_outcomes`
decides: an id this server never predicted is a 404, an outcome that contradicts one recorded before a 409, each
naming the item; the same outcome sent again is a duplicate, not written)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from icl_toolkit.evaluation.monitor.log import FeedbackRejected
from icl_toolkit.serve.errors import Rejected, error_response, parse_body
from icl_toolkit.serve.schemas import ErrorOut, FeedbackRequest, FeedbackResponse
from icl_toolkit.serve.state import server_state

router = APIRouter()

ERRORS = {code: {"model": ErrorOut} for code in (401, 404, 409, 422, 501)}


@router.post("/v1/feedback", response_model=FeedbackResponse, responses=ERRORS)  # type: ignore[arg-type]
async def feedback(request: Request) -> Any:
    state = server_state(request)
    rid = request.state.request_id
    if state.monitor is None:
        return error_response(
            501, rid, "this server keeps no monitor log; start icl serve with --monitor-dir DIR to take outcomes"
        )
    try:
        req = parse_body(FeedbackRequest, await request.body())
        try:
            done = state.monitor.record_outcomes([(o.patient_id, o.outcome, o.date) for o in req.outcomes])
        except OSError:
            state.count_monitor_write("outcomes", ok=False)
            raise
        state.count_monitor_write("outcomes", ok=True)
    except Rejected as exc:
        return exc.response(rid)
    except FeedbackRejected as exc:
        return error_response(exc.status, rid, exc.error, exc.detail())
    return FeedbackResponse(request_id=rid, recorded=done.recorded, duplicates=done.duplicates)
