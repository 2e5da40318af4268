"""How prompts are laid out and packed: :class:`PromptConfig` and the option types it is made of (listed here
once)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Demos", "Mode", "Order", "RationaleStyle", "PromptConfig"]

Demos = Literal["rationale", "label", "none"]
"""What each demonstration shows: history + rationale + outcome, history + outcome, or no demos."""
Mode = Literal["score", "reason"]
Order = Literal["similar-last", "similar-first", "random"]
RationaleStyle = Literal["free_text", "stepwise"]


class PromptConfig(BaseModel):
    """How prompts are laid out and packed (validated; unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    demos: Demos = "rationale"
    """What each demonstration shows: history + rationale + outcome, history + outcome, or no demos."""
    rationale: RationaleStyle = "free_text"
    """Which rationale of a demonstration to show."""
    mode: Mode = "score"
    """``score``: read P(yes) at the answer slot; ``reason``: the model reasons first (reason-first template)."""
    template: str | None = None
    """Template name in the prompts folder (without ``.j2``) or a ``.j2`` file; default: by ``demos`` and ``mode`` (a
    checkpoint from ``icl finetune`` reasons with the prompt it was trained on)."""
    order: Order = "similar-last"
    """Presentation order of demos; the default puts the most similar next to the query."""
    demo_tokens: int = Field(200, ge=90)
    """History budget per demonstration, in model tokens."""
    query_tokens: int = Field(400, ge=90)
    """History budget of the query patient, in model tokens."""
    max_context: int | None = Field(None, ge=256)
    """Context limit in tokens (default: the model's)."""
    reserve_tokens: int = Field(8, ge=1)
    """Room kept for the answer (score mode) on top of the prompt."""
    reason_tokens: int = Field(160, ge=8, le=2048)
    """Most tokens of reasoning in reason mode (also kept free in the context)."""
    horizon_years: float = Field(5.0, gt=0)
    """Outcome window length, shown in the prompt."""
    seed: int = 0
    """Seed of the ``random`` demo order."""
