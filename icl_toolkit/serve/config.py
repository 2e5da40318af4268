"""The service's settings: request limits (:class:`ServerSettings`) and micro-batching (:class:`BatchSettings`),
validated; ``icl serve``'s flags are generated from these fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServerSettings", "BatchSettings"]


class ServerSettings(BaseModel):
    """What one request may ask of the server (413 or 422 above), and who may ask."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    api_key: str | None = Field(None, repr=False)
    """Bearer token required on /v1/* (None: no auth); ``icl serve`` reads it from ``$ICL_API_KEY``."""
    max_body_mb: float = Field(8.0, gt=0)
    """Largest request body in MB (413 above)."""
    max_patients: int = Field(64, ge=1)
    """Most patients per request (413 above)."""
    max_k: int = Field(16, ge=0)
    """Most demonstrations per patient a request may ask for (422 above)."""
    max_demos: int = Field(256, ge=1)
    """Most demonstrations per request, patients x k (413 above)."""
    max_request_tokens: int = Field(200_000, ge=1)
    """Most prompt tokens per request, estimated from the history budgets before any work (413 above)."""
    metrics_auth: bool = False
    """``GET /metrics`` needs the bearer token too (when ``$ICL_API_KEY`` is set); off by default, as Prometheus
    scrapers usually sit inside the network."""

    @property
    def max_body_bytes(self) -> int:
        """:attr:`max_body_mb` in bytes."""
        return int(self.max_body_mb * (1 << 20))


class BatchSettings(BaseModel):
    """How concurrent requests are coalesced into backend batches."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_batch: int = Field(16, ge=1)
    """Most patients per backend batch (micro-batching)."""
    max_wait_ms: float = Field(10.0, ge=0)
    """How long a batch waits for more patients (ms)."""
    enabled: bool = True
    """Coalesce concurrent requests into backend batches (off: every request runs alone, in arrival order)."""
    max_queue: int = Field(256, ge=1)
    """Most patients waiting to be scored; a request that does not fit gets 503 with Retry-After."""
