"""Request and response schemas of ``icl serve`` (pydantic; unknown fields rejected).

Patients are in the cohort schema (:class:`icl_toolkit.cohort.Patient`), which is
strict: requests are validated from the raw JSON body (``model_validate_json``),
where ISO dates are the JSON form of dates, so a request body is exactly a list
of cohort JSONL records.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.cohort import Patient
from icl_toolkit.spec import Demos, Strategy

__all__ = ["PredictOptions", "PredictRequest", "PredictionOut", "PredictResponse", "Info", "Health", "ErrorOut"]


class PredictOptions(BaseModel):
    """Per-request settings, a part of the prediction spec (:mod:`icl_toolkit.spec`, same names and types);
    the rest (templates, budgets, model) is fixed when the server starts. Types are strict: ``"k": "4"`` or
    ``"return_prompt": 0`` are refused, not coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    k: int = Field(4, ge=0, le=64)
    """Demonstrations per patient (0: zero-shot)."""
    strategy: Strategy = "similar"
    """How demonstrations are chosen from the pool."""
    demos: Demos = "rationale"
    """Demonstration content: history + rationale + outcome, history + outcome, or none."""
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """``predicted`` is 1 when the probability is at least this."""
    return_prompt: bool = False
    """Include the exact prompt text in each prediction."""


class PredictRequest(BaseModel):
    """One or many patients and the options for all of them."""

    model_config = ConfigDict(extra="forbid")

    patients: list[Patient] = Field(min_length=1)
    options: PredictOptions = Field(default_factory=PredictOptions)


class PredictionOut(BaseModel):
    """One patient's prediction: the same record as a line of ``icl predict``'s output."""

    patient_id: str
    probability: float
    predicted: int
    label: int | None
    demos: list[dict[str, Any]]
    dropped_demos: list[dict[str, Any]]
    truncated_items: dict[str, int]
    prompt_tokens: int
    prompt_hash: str
    model_id: str
    template: str
    mode: str
    reasoning: str | None = None
    seconds: float
    logprobs: list[float]
    prompt: str | None = None


class PredictResponse(BaseModel):
    request_id: str
    predictions: list[PredictionOut]


class Info(BaseModel):
    version: str
    model_id: str
    backend: str
    max_context: int
    index: dict[str, Any]
    pool_size: int
    limits: dict[str, Any]
    batching: dict[str, Any]


class Health(BaseModel):
    status: Literal["ready", "loading", "failed"]
    detail: str | None = None


class ErrorOut(BaseModel):
    request_id: str
    error: str
    detail: Any = None
