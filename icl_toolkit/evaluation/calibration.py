"""Recalibration of any arm or baseline on its validation predictions (scikit-learn's Platt scaling and
isotonic regression), with the calibration slope, Brier score and ECE before and after.

Platt scaling fits a logistic regression of the outcome on the logit of the probability, with its slope
constrained to be positive (when the validation predictions rank the wrong way, the unconstrained fit would turn
the ranking upside down; the constrained maximum sits at a slope of 0, the validation base rate, and a slope of
1e-6 keeps the original order). So the map is strictly increasing, and every ranking metric (AUROC, AUPRC) is
exactly unchanged. Isotonic regression is monotone but
pools neighbouring probabilities into steps, so tied patients can move AUROC slightly; its AUROC is reported.
The calibration slope is the coefficient of a logistic regression of the outcome on the logit of the
probability (1 is ideal; below 1 the probabilities are too extreme, above 1 too timid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from icl_toolkit.evaluation.metrics import Labels, Probabilities, bootstrap_ci

__all__ = ["METHODS", "calibration_slope", "fit_recalibrator", "recalibration_rows"]

METHODS = ("platt", "isotonic")
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def calibration_slope(labels: Labels, probabilities: Probabilities) -> float:
    """Slope of the logistic regression of the outcome on logit(p), without a penalty; nan when the logits span
    less than 0.001 (every probability nearly the same, as a Platt fit at its constraint gives)."""
    from sklearn.linear_model import LogisticRegression

    z = _logit(np.asarray(probabilities))
    if np.ptp(z) < 1e-3:  # (nearly) one probability for everyone: no slope to read
        return float("nan")
    model = LogisticRegression(C=np.inf, max_iter=1000).fit(z[:, None], np.asarray(labels))
    return float(model.coef_[0, 0])


def fit_recalibrator(method: str, val_labels: Labels, val_probabilities: Probabilities) -> Any:
    """A function from raw to recalibrated probabilities, fit on validation predictions."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    y, p = np.asarray(val_labels), np.asarray(val_probabilities, dtype=float)
    if method == "platt":
        model = LogisticRegression(C=np.inf, max_iter=1000).fit(_logit(p)[:, None], y)
        a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
        if a <= 0:  # the slope's constraint binds: the base rate, the order kept
            a = 1e-6
            b = float(_logit(np.array([y.mean()]))[0]) - a * float(_logit(p).mean())
        return lambda q: 1.0 / (1.0 + np.exp(-(a * _logit(np.asarray(q)) + b)))
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return lambda q: np.clip(iso.predict(np.asarray(q, dtype=float)), _EPS, 1 - _EPS)
    raise ValueError(f"unknown recalibration {method!r}; use one of {METHODS}")


def recalibration_rows(
    name: str,
    test_labels: Labels,
    test_probabilities: Probabilities,
    val_labels: Labels,
    val_probabilities: Probabilities,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per method (raw, platt, isotonic) of one entry on the test patients: Brier and ECE with
    bootstrap intervals, the calibration slope and AUROC. Empty when the validation predictions hold one class
    (nothing to fit)."""
    yv = np.asarray(val_labels)
    if len(set(yv.tolist())) < 2:
        return []
    y, p = np.asarray(test_labels), np.asarray(test_probabilities, dtype=float)
    rows = []
    for method in ("raw", *METHODS):
        q = p if method == "raw" else fit_recalibrator(method, yv, val_probabilities)(p)
        ci = bootstrap_ci(y, q, n_resamples=n_resamples, seed=seed, metrics=("auroc", "brier", "ece"))
        row: dict[str, Any] = {"name": name, "method": method, "n_val": int(len(yv))}
        for m in ("brier", "ece", "auroc"):
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = ci[m]["value"], ci[m]["lo"], ci[m]["hi"]
        row["slope"] = calibration_slope(y, q)
        row["mean_probability"] = float(np.mean(q))
        rows.append(row)
    return rows
