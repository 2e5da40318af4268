"""Ownership and transparency fields of a model card: who answers for a predictor, what it is for, what it is
not for, and when it is reviewed next.

The same fields are the ``[card]`` table of an ``icl compare`` config and the ``--card`` file of ``icl serve``
(TOML or JSON); they are printed in every model card of a comparison report and in ``GET /v1/info``, with the
content hashes of the data behind the predictor (data provenance).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelCard", "CARD_FIELDS"]

CARD_FIELDS = "Allowed keys: owner, contact, intended_use, out_of_scope_use, review_date (YYYY-MM-DD)."


class ModelCard(BaseModel):
    """Who owns a predictor and how it may be used (every field optional; unset ones are printed as such)."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None = Field(None, min_length=1)
    """The person or team accountable for the predictor."""
    contact: str | None = Field(None, min_length=1)
    """Where users report problems (an address, a ticket queue)."""
    intended_use: str | None = Field(None, min_length=1)
    """What the predictor is for, and for whom."""
    out_of_scope_use: str | None = Field(None, min_length=1)
    """Uses it was not built or validated for."""
    review_date: dt.date | None = None
    """When the predictor is next reviewed (its monitoring report, its card)."""

    def as_info(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """The fields and the data provenance as JSON-ready values (``/v1/info``)."""
        out = self.model_dump(mode="json")
        out["review_overdue"] = bool(self.review_date and self.review_date < dt.date.today())
        out["data_provenance"] = provenance
        return out

    def markdown(self, provenance: dict[str, Any], default_intended_use: str | None = None) -> list[str]:
        """Bullet lines of a model card."""

        def val(x: Any) -> str:
            return str(x) if x else "not set"

        review = val(self.review_date)
        if self.review_date and self.review_date < dt.date.today():
            review += " (overdue)"
        return [
            f"- **Owner**: {val(self.owner)}; **contact**: {val(self.contact)}; **next review**: {review}",
            f"- **Intended use**: {self.intended_use or default_intended_use or 'not set'}",
            f"- **Out of scope**: {val(self.out_of_scope_use)}",
            "- **Data provenance**: " + "; ".join(f"{k} `{v}`" for k, v in provenance.items()),
        ]
