"""Performance before the outcomes arrive: confidence-based estimation from the predictions themselves.

A calibrated model's probability is the chance of the outcome, so from a window's probabilities alone one can say
what its AUROC and event rate are expected to be (the idea of NannyML's confidence-based performance estimation,
CBPE; NannyML itself does not install with this project's pinned LightGBM, see the monitoring docs):

- a **calibrator** maps the model's probabilities to calibrated ones: Platt scaling (scikit-learn's logistic
  regression on the log-odds) fit on a reference set with known outcomes, such as the validation split's
  predictions or the first outcome-complete window. Two parameters: isotonic regression, NannyML's default, fits
  steps to the noise of a few hundred outcomes and then promises an AUROC the model does not have (it did so
  here on the random test model: 0.71 estimated, 0.58 realized). Without a calibrator the model's own
  probabilities are taken as calibrated. The estimate is valid only while the calibrator is: under concept drift
  (the same inputs, a different outcome) it is not;
- **expected AUROC**: with calibrated probabilities ``q`` and the model's scores ``s``, every ordered pair of two
  different patients ``(i, j)`` is a (positive, negative) pair with probability ``q_i (1 - q_j)``; the expected
  AUROC is the weighted share of those pairs the scores order correctly (ties count half). It is computed with
  scikit-learn's weighted ``roc_auc_score`` over each patient entered once as a positive (weight ``q``) and once
  as a negative (weight ``1 - q``), with the pairs of a patient with itself taken out exactly;
- **interval**: outcomes drawn from the calibrated probabilities (``resamples`` times, seeded): the 2.5th and
  97.5th percentiles of the AUROC and event rate those outcomes would give: how far the realized value may fall
  from the estimate by chance alone, in a window of this size;
- **expected event rate**: the mean calibrated probability; the **expected calibration error** of the model is its
  mean probability minus that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["fit_calibrator", "expected_auroc", "estimate_performance"]


def _logit(p: Any) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).reshape(-1, 1)


def fit_calibrator(probability: Any, outcome: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Platt scaling: a logistic regression of outcomes on the probabilities' log-odds (scikit-learn, unpenalised)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e6).fit(_logit(probability), np.asarray(outcome, dtype=int))
    return lambda p: np.asarray(model.predict_proba(_logit(p))[:, 1], dtype=float)


def expected_auroc(scores: Any, q: Any) -> float:
    """The expected AUROC of ``scores`` when patient ``i``'s outcome is 1 with probability ``q[i]`` (independently):
    ``sum_{i != j} q_i (1 - q_j) [s_i > s_j] (+ half for ties) / sum_{i != j} q_i (1 - q_j)``. NaN when there is no
    pair (fewer than two patients, or all ``q`` 0 or all 1)."""
    from sklearn.metrics import roc_auc_score

    s, q = np.asarray(scores, dtype=float), np.clip(np.asarray(q, dtype=float), 0.0, 1.0)
    total = q.sum() * (1 - q).sum()
    self_pairs = float(np.sum(q * (1 - q)))  # a patient paired with itself: a tie, counted half by sklearn
    denom = total - self_pairs
    if len(s) < 2 or denom <= 0:
        return float("nan")
    y = np.r_[np.ones(len(s)), np.zeros(len(s))]
    auc_all = roc_auc_score(y, np.r_[s, s], sample_weight=np.r_[q, 1 - q])
    return float((auc_all * total - 0.5 * self_pairs) / denom)


def estimate_performance(
    probability: Any,
    calibrator: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """A window's estimated AUROC, event rate and calibration error, with intervals (see the module docstring)."""
    from scipy.stats import rankdata

    p = np.asarray(probability, dtype=float)
    q = calibrator(p) if calibrator is not None else p.copy()
    out: dict[str, Any] = {
        "estimated_auroc": expected_auroc(p, q),
        "estimated_rate": float(q.mean()) if len(q) else None,
        "estimated_calibration_error": float(p.mean() - q.mean()) if len(q) else None,
        "estimated_auroc_lo": None,
        "estimated_auroc_hi": None,
        "estimated_rate_lo": None,
        "estimated_rate_hi": None,
    }
    if len(p) < 2:
        return out
    rng = np.random.default_rng(seed)
    ranks = rankdata(p)
    ys = rng.random((resamples, len(p))) < q  # outcomes the calibrated model would give
    m = ys.sum(axis=1)
    n = len(p) - m
    ok = (m > 0) & (n > 0)
    aucs = (ys[ok] @ ranks - m[ok] * (m[ok] + 1) / 2) / (m[ok] * n[ok])  # AUROC by midranks, per draw
    rates = m / len(p)
    if len(aucs):
        out["estimated_auroc_lo"], out["estimated_auroc_hi"] = (float(v) for v in np.percentile(aucs, [2.5, 97.5]))
    out["estimated_rate_lo"], out["estimated_rate_hi"] = (float(v) for v in np.percentile(rates, [2.5, 97.5]))
    if isinstance(out["estimated_auroc"], float) and np.isnan(out["estimated_auroc"]):
        out["estimated_auroc"] = None
    return out
