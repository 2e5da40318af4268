"""``GET /health``: 200 once the model and index are loaded and the batch worker runs, 503 before (loading), after
a failed load (with the reason) and while stopping."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from icl_toolkit.serve.schemas import Health
from icl_toolkit.serve.state import server_state

router = APIRouter()


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> JSONResponse:
    state = server_state(request)
    status = "ready" if state.ready else ("loading" if state.status in ("loading", "ready") else state.status)
    return JSONResponse(
        Health(status=status, detail=state.detail).model_dump(exclude_none=True),
        status_code=200 if state.ready else 503,
    )
