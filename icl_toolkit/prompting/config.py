"""How prompts are laid out and packed: :class:`PromptConfig` and the option types it is made of (listed here
once)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from icl_toolkit.data.task import WithTask

__all__ = ["Demos", "Mode", "Order", "RationaleStyle", "PromptConfig"]

Demos = Literal["rationale", "label", "none"]
"""What each demonstration shows: history + rationale + outcome, history + outcome, or no demos."""
Mode = Literal["score", "reason"]
Order = Literal["similar-last", "similar-first", "random"]
RationaleStyle = Literal["free_text", "stepwise"]


class PromptConfig(WithTask):
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
    """Seed of the ``random`` demo order and of the order ensemble's permutations."""
    orders: int = Field(1, ge=1, le=32)
    """Order ensemble: P(yes) averaged over this many orders of the demos (the configured order first, then seeded
    permutations per patient); the spread across orders is kept per record. 1: one order, as without it."""
    show_risk: bool = False
    """Write the pool model's risk (the prognostic retriever's logistic regression, cross-fitted for pool
    patients) of the patient and of each demo into the prompt."""
    stop: tuple[str, ...] = ()
    """Reason mode: more strings that end the reasoning (besides the answer prefix and any the template sets)."""
    no_repeat_ngram: int = Field(0, ge=0, le=64)
    """Reason mode: forbid repeating any n-gram of this many tokens (0: off; transformers backend only)."""
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0)
    """Reason mode: penalty on tokens already in the prompt or the reasoning (1: off)."""
