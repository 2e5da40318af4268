"""Metrics of probabilistic predictions against known labels (scikit-learn underneath).

This module holds the point metrics that ``icl predict`` prints; confidence
intervals and paired tests come with the comparison module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["summary"]


def summary(labels: Sequence[int], probabilities: Sequence[float]) -> dict[str, Any]:
    """n, prevalence, AUROC, AUPRC and Brier score.

    AUROC and AUPRC are ``None`` when only one class is present (they are undefined).
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length ({len(y)} vs {len(p)}).")
    out: dict[str, Any] = {"n": int(len(y)), "prevalence": float(y.mean()) if len(y) else None,
                           "auroc": None, "auprc": None, "brier": float(brier_score_loss(y, p)) if len(y) else None}
    if len(np.unique(y)) == 2:
        out["auroc"] = float(roc_auc_score(y, p))
        out["auprc"] = float(average_precision_score(y, p))
    return out
