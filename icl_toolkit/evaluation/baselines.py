"""Baselines on the same test patients as the arms.

- ``logreg``: logistic regression on a binary bag of codes (``system:code`` of
  every pre-index event but visits) plus age and sex, fit on the pool (the same
  features as the prognostic retriever);
- ``age``: logistic regression on age alone, fit on the pool;
- ``knn``: the share of positive outcomes among the same retrieved neighbours
  the demonstration arms show (one baseline per retrieval used);
- ``oracle``: the true risk a synthetic cohort carries in ``metadata.true_risk``
  (skipped when any test patient lacks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient
from icl_toolkit.retrieval.representations import prognostic_features
from icl_toolkit.retrieval.retriever import Retrieval

__all__ = ["bag_of_codes", "fit_logreg", "fit_age_only", "knn_vote", "oracle_risk"]


def _age(p: Patient) -> float:
    return (float(p.age_at_index) - 70.0) / 10.0


def bag_of_codes(p: Patient) -> dict[str, float]:
    """Features of one patient: each code present on or before the index date (visits aside), age and sex; the
    same features as the prognostic retriever's model (:func:`icl_toolkit.retrieval.representations.prognostic_features`)."""
    return prognostic_features(p)


def _labels(pool: Sequence[Patient]) -> np.ndarray:
    y = np.array([-1 if p.label is None else p.label for p in pool])
    if (y < 0).any() or len(set(y.tolist())) < 2:
        raise ConfigError("The baselines need a pool with known labels of both classes.")
    return y


def fit_logreg(pool: Sequence[Patient], C: float = 1.0) -> Any:
    """A fitted pipeline (DictVectorizer -> LogisticRegression); ``predict_proba`` takes feature dicts."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(DictVectorizer(), LogisticRegression(C=C, max_iter=5000))
    return model.fit([bag_of_codes(p) for p in pool], _labels(pool))


def fit_age_only(pool: Sequence[Patient]) -> Any:
    """Logistic regression on age alone."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(np.array([[_age(p)] for p in pool]), _labels(pool))


def predict_logreg(model: Any, patients: Sequence[Patient]) -> list[float]:
    return model.predict_proba([bag_of_codes(p) for p in patients])[:, 1].tolist()


def predict_age(model: Any, patients: Sequence[Patient]) -> list[float]:
    return model.predict_proba(np.array([[_age(p)] for p in patients]))[:, 1].tolist()


def knn_vote(retrievals: Sequence[Retrieval]) -> list[float]:
    """Share of positive outcomes among each patient's retrieved neighbours."""
    return [float(np.mean([h.label for h in r.hits])) if r.hits else 0.0 for r in retrievals]


RISK_SHOWN = "pool risk score (shown)"
"""The entry name of the pool model's risk, the score ``show_risk`` arms show."""


def vote_name(strategy: str, k: int, checkpoint: str | None = None) -> str:
    """The name of the vote of an arm's demonstrations: ``kNN vote similar k=4``; a ``gain`` selection depends on
    the model that scored it, so its vote names the checkpoint: ``kNN vote gain k=4 (base)``."""
    return f"kNN vote {strategy} k={k}" + (f" ({checkpoint})" if strategy == "gain" and checkpoint else "")


def record_vote(records: Sequence[dict[str, Any]]) -> list[float]:
    """Share of positive outcomes among the demonstrations each prediction record shows (after packing)."""
    return [float(np.mean([d["label"] for d in r["demos"]])) if r["demos"] else 0.0 for r in records]


def oracle_risk(patients: Sequence[Patient]) -> list[float] | None:
    """``metadata.true_risk`` of every patient, or ``None`` when any lacks it."""
    out = []
    for p in patients:
        risk = (p.metadata or {}).get("true_risk")
        if not isinstance(risk, int | float):
            return None
        out.append(float(risk))
    return out
