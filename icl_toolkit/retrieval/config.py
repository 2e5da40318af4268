"""How demonstrations are chosen: :class:`RetrievalConfig` and the option types it is made of.

The strategies (:data:`Strategy`) and retrievers (:data:`RetrieverKind`) are listed here once; what they do is
described in :mod:`icl_toolkit.retrieval.retriever` (selection) and :mod:`icl_toolkit.retrieval.representations`
(what "similar" means).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Strategy", "STRATEGIES", "Balance", "RetrieverKind", "RETRIEVERS", "RetrievalConfig"]

Strategy = Literal["similar", "balanced", "mmr", "random", "gain"]
"""How demonstrations are chosen (see the module docstring); the one place the strategies are listed."""
STRATEGIES: tuple[str, ...] = get_args(Strategy)
Balance = Literal["half", "prevalence"]
RetrieverKind = Literal["dense", "sparse", "hybrid", "prognostic"]
"""The retrievers (see :mod:`icl_toolkit.retrieval.representations`); the one place they are listed."""
RETRIEVERS: tuple[str, ...] = get_args(RetrieverKind)


class RetrievalConfig(BaseModel):
    """How demonstrations are chosen (validated; unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    k: int = Field(4, ge=0, le=1024)
    """Demonstrations per patient (0: zero-shot, the same as ``demos`` none)."""
    strategy: Strategy = "similar"
    """How demonstrations are chosen: ``similar`` (the k most similar), ``balanced`` (the most similar under label
    quotas), ``mmr`` (similar but diverse), ``random`` (seeded per patient), ``gain`` (the most similar re-ranked by what each demo did for the model: gain
    scores from ``icl index gain``)."""
    balance: Balance = "half"
    """Label quotas of the ``balanced`` strategy: half and half, or the pool's prevalence."""
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0)
    """Relevance weight of ``mmr`` (1 = plain similarity, 0 = only diversity)."""
    gain_candidates: int = Field(12, ge=1, le=4096)
    """``gain``: how many of the most similar pool patients are re-ranked by their gain score (the k best are
    shown)."""
    seed: int = 0
    """Seed of the ``random`` strategy."""
    temporal_guard: bool = False
    """Drop demos whose outcome window ends after the query's index date."""
    horizon_years: float = Field(5.0, gt=0)
    """Outcome window after the index date, in years (shown in the prompt; the temporal guard's window)."""
    retriever: RetrieverKind = "prognostic"
    """What "similar" means: ``dense`` (MiniLM profile), ``sparse`` (TF-IDF over codes), ``hybrid`` (dense +
    sparse + age/sex/history) or ``prognostic`` (similar learned risk, then similar findings); see
    :mod:`icl_toolkit.retrieval.representations`."""
    hybrid_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    """``hybrid``: weights of the dense, sparse and structured similarities."""
    prognostic_weight: float = Field(0.5, ge=0.0, le=1.0)
    """``prognostic``: share of the similarity that is closeness in learned risk (the rest: sparse 3/4, structured
    1/4)."""
    prognostic_bandwidth: float = Field(0.1, gt=0.0, le=5.0)
    """``prognostic``: width of the risk kernel, in units of the pool's spread of risk scores."""
    folds: int = Field(5, ge=2, le=50)
    """``prognostic``: cross-fitting folds (each pool patient is scored by a model that never saw its label)."""

    def cache_config(self) -> dict[str, Any]:
        """The settings as a retrieval cache key records them: ``gain_candidates`` only for strategy ``gain`` (the
        one strategy it changes), so caches made before it existed stay valid."""
        return self.model_dump(mode="json", exclude=None if self.strategy == "gain" else {"gain_candidates"})

    @field_validator("hybrid_weights")
    @classmethod
    def _weights(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(w < 0 for w in value) or sum(value) <= 0:
            raise ValueError(f"hybrid weights must be >= 0 and not all 0, got {value}")
        return value
