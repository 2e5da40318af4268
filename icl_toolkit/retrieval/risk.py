"""The pool model's risk of a patient, as a prompt can show it (``show_risk``).

The model is the prognostic retriever's own (:class:`~icl_toolkit.retrieval.representations.PrognosticBlock`: a
logistic regression on the pool's labels from a binary bag of pre-index codes, age and sex). A risk is shown as
the model's probability:

- a **query** patient (not in the pool) gets the model fit on the whole pool: its own label never entered it;
- a **pool** patient (a demonstration, or a query whose subject is in the pool) gets its *cross-fitted* risk,
  from the model fit on the other folds, so a shown risk never comes from a model that saw that patient's
  outcome. A demo's risk beside its outcome is then an honest picture of how the model fares on patients it
  has not seen.

Refitting is cheap (a few logistic regressions on the pool), deterministic (folds by a hash of the subject) and
gives the same numbers as the retriever's block with the same settings, so the risk does not need the index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient
from icl_toolkit.retrieval.config import RetrievalConfig
from icl_toolkit.retrieval.representations import PrognosticBlock

__all__ = ["PoolRisk", "risk_text"]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class PoolRisk:
    """Risk probabilities from the pool model: cross-fitted for pool patients, full-pool for everyone else."""

    def __init__(self, config: RetrievalConfig | None = None) -> None:
        self.config = config or RetrievalConfig()

    def fit(self, pool: Sequence[Patient]) -> PoolRisk:
        c = self.config
        block = PrognosticBlock(c.prognostic_bandwidth, c.folds)
        if not block.folds_for(pool):
            cases = sum(p.label == 1 for p in pool)
            raise ConfigError(
                f"show_risk needs the pool model's cross-fitted risk, and this pool ({cases} cases, "
                f"{len(pool) - cases} controls) is too small to cross-fit it (not even 2 folds with cases and "
                "controls outside each). Drop --show-risk or use a larger pool."
            )
        block.fit(pool)
        self.block_ = block
        self.pool_risk_ = {p.subject_id: _sigmoid(float(x)) for p, x in zip(pool, block.pool_logits_)}
        return self

    def risk(self, patients: Sequence[Patient]) -> np.ndarray:
        """Each patient's risk: cross-fitted when its subject is in the pool, from the whole-pool model otherwise."""
        if not hasattr(self, "block_"):
            raise ConfigError("This PoolRisk is not fitted yet. Call fit(pool) first.")
        full = self.block_.logits(patients)
        return np.array(
            [self.pool_risk_.get(p.subject_id, _sigmoid(float(x))) for p, x in zip(patients, full)], dtype=float
        )


def risk_text(risk: float) -> str:
    """A risk as a prompt shows it: a whole percent (below 1%: one decimal)."""
    pct = 100 * risk
    return f"{pct:.1f}%" if pct < 1 else f"{pct:.0f}%"
