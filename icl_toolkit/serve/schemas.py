"""Request and response schemas of ``icl serve`` (pydantic; unknown fields rejected).

Patients are in the cohort schema (:class:`icl_toolkit.data.cohort.Patient`), which is
strict: requests are validated from the raw JSON body (``model_validate_json``),
where ISO dates are the JSON form of dates, so a request body is exactly a list
of cohort JSONL records.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import MISSING
from typing import TYPE_CHECKING, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from icl_toolkit.data.cohort import Patient
from icl_toolkit.inference.predictor import Prediction
from icl_toolkit.prompting.config import Demos
from icl_toolkit.retrieval.config import Strategy

__all__ = [
    "PredictOptions",
    "PredictRequest",
    "PredictionOut",
    "PredictResponse",
    "Info",
    "Health",
    "ErrorOut",
    "Outcome",
    "FeedbackRequest",
    "FeedbackResponse",
]


class PredictOptions(BaseModel):
    """Per-request settings, a part of the prediction spec (:mod:`icl_toolkit.inference.config`, same names and types);
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


def _prediction_out() -> type[BaseModel]:
    """The response record: every field of :class:`icl_toolkit.inference.predictor.Prediction` (a line of ``icl predict``'s
    output), plus the prompt text when asked for."""
    hints = get_type_hints(Prediction)

    def default(f: dataclasses.Field[Any]) -> Any:
        if f.default is not MISSING:
            return f.default
        return ... if f.default_factory is MISSING else f.default_factory()

    fields: dict[str, Any] = {f.name: (hints[f.name], default(f)) for f in dataclasses.fields(Prediction)}
    return create_model(
        "PredictionOut",
        __doc__="One patient's prediction: the same record as a line of icl "
        "predict's output (prompt: the exact prompt text, with return_prompt).",
        **fields,
        prompt=(str | None, None),
    )


if TYPE_CHECKING:  # built at import time from the Prediction record: a type checker sees a model
    PredictionOut = BaseModel
else:
    PredictionOut = _prediction_out()


class PredictResponse(BaseModel):
    request_id: str
    predictions: list[PredictionOut]


class Outcome(BaseModel):
    """An outcome that became known for a patient the service predicted."""

    model_config = ConfigDict(extra="forbid", strict=True)

    patient_id: str = Field(min_length=1)
    """The id the patient had in its prediction request (pseudonymised before it is stored)."""
    outcome: Literal[0, 1]
    """1: the task's outcome (ADRD onset by default) within the prediction window; 0: none."""
    date: dt.date
    """When the outcome was established (onset date, or the end of follow-up for 0)."""


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcomes: list[Outcome] = Field(min_length=1, max_length=10_000)


class FeedbackResponse(BaseModel):
    request_id: str
    recorded: int
    """Outcomes written to the monitor log."""
    duplicates: int
    """Outcomes sent before with the same value and date (idempotent: nothing written)."""


class Info(BaseModel):
    version: str
    model_id: str
    backend: str
    max_context: int
    index: dict[str, Any]
    pool_size: int
    limits: dict[str, Any]
    batching: dict[str, Any]
    queue: dict[str, Any] = Field(default_factory=dict)
    """Patients waiting now, patients dropped because their client went away, requests refused (queue full)."""
    model_card: dict[str, Any] = Field(default_factory=dict)
    """Owner, contact, intended and out-of-scope use, review date, and the data's content hashes."""
    monitor: dict[str, Any] | None = None
    """The monitor log (predictions and outcomes logged), when the server runs with --monitor-dir."""


class Health(BaseModel):
    status: Literal["ready", "loading", "failed", "stopping"]
    detail: str | None = None


class ErrorOut(BaseModel):
    request_id: str
    error: str
    detail: Any = None
