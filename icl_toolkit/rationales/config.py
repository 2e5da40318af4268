"""How a teacher writes rationales: :class:`TeacherConfig` (validated; the flags of ``icl rationales generate``)."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from icl_toolkit.data.task import WithTask
from icl_toolkit.prompting.config import RationaleStyle as Style

__all__ = ["Style", "TeacherConfig"]


class TeacherConfig(WithTask):
    """How the teacher writes (validated; unknown fields are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    styles: tuple[Style, ...] = Field(("free_text", "stepwise"), min_length=1)
    """Which rationales to write."""
    max_new_tokens: int = Field(200, ge=16, le=4096)
    """Longest rationale, in tokens."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """0: greedy decoding (reproducible)."""
    seed: int = 0
    """Sampling seed (with a temperature above 0)."""
    history_tokens: int = Field(700, ge=32)
    """Token budget of the history shown to the teacher (the serializer's drop policy cuts it)."""
    horizon_years: float = Field(5.0, gt=0)
    """Outcome window, as in the cohort's labels."""
