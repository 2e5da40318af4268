"""``GET /v1/info``: the model, index, limits, batching and queue, the model card, the monitor log's counts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from icl_toolkit.core import __version__
from icl_toolkit.serve.config import ServerSettings
from icl_toolkit.serve.errors import error_response
from icl_toolkit.serve.schemas import ErrorOut, Info
from icl_toolkit.serve.service import PredictionService
from icl_toolkit.serve.state import server_state

router = APIRouter()


def default_info(service: PredictionService, settings: ServerSettings) -> dict[str, Any]:
    """What ``/v1/info`` says about a loaded service."""
    meta = dict(service.index.meta) if service.index is not None else {}
    limits = settings.model_dump(exclude={"api_key"}) | {
        "max_body_bytes": settings.max_body_bytes,
        "max_queue": service.batching.max_queue,
    }
    return {
        "version": __version__,
        "model_id": service.backend.model_id,
        "backend": type(service.backend).__name__,
        "max_context": service.backend.max_context,
        "index": meta,
        "pool_size": len(service.pool),
        "limits": limits,
        "batching": {
            "enabled": service.batching.enabled,
            "max_batch": service.batching.max_batch,
            "max_wait_ms": service.batching.max_wait_ms,
        },
        "queue": {
            "queued": service.queued,
            "dropped": service.dropped,
            "refused": service.refused,
            "seconds_per_patient": round(service.seconds_per_patient, 4),
        },
    }


@router.get("/v1/info", response_model=Info, responses={503: {"model": ErrorOut}})
async def get_info(request: Request) -> Any:
    state = server_state(request)
    service = state.service
    if service is None:
        return error_response(503, request.state.request_id, "not ready: the model and index are still loading")
    out = state.info(service) if state.info else default_info(service, state.settings)
    out.setdefault("model_card", state.card)
    if state.monitor is not None:
        out.setdefault(
            "monitor", {"predictions_logged": len(state.monitor.known), "outcomes": len(state.monitor.outcomes)}
        )
    return Info(**out)
