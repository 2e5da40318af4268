"""Error answers: one JSON shape (:class:`~icl_toolkit.serve.schemas.ErrorOut`) with the request id, and
:class:`Rejected`, which the service layer raises and the routes turn into that answer."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from icl_toolkit.serve.schemas import ErrorOut

__all__ = ["Rejected", "error_response", "parse_body", "field_path"]

M = TypeVar("M", bound=BaseModel)


class Rejected(Exception):
    """A request the server does not take: its HTTP status, the error, field-level details, ``Retry-After``."""

    def __init__(self, status: int, error: str, detail: Any = None, retry_after: int | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.retry_after = status, error, detail, retry_after

    def response(self, request_id: str) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return error_response(self.status, request_id, self.error, self.detail, headers)


def error_response(
    status: int, request_id: str, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorOut(request_id=request_id, error=error, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)  # X-Request-ID: added by RequestContext


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("patients", 0, "events")`` -> ``patients[0].events``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_body(model: type[M], body: bytes) -> M:
    """The request body as ``model`` (validated from the raw JSON).

    Raises:
        Rejected: 422 with each problem's field path.
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        detail = [
            {"field": field_path(e["loc"]), "loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise Rejected(422, "invalid request", detail) from None
