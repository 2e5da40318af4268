"""Metrics of probabilistic predictions against known labels, with honest uncertainty.

- :func:`summary`: n, prevalence, AUROC, AUPRC, Brier (what ``icl predict`` prints).
- :func:`point_metrics`: the above plus expected calibration error and F1 at a
  threshold (chosen on a validation split with :func:`choose_threshold`).
- :func:`bootstrap_ci`: stratified bootstrap percentile intervals (cases and
  controls resampled separately, so every resample has both classes), seeded.
- :func:`delong_test`: the paired DeLong test of two AUROCs on the same patients
  (DeLong, DeLong and Clarke-Pearson 1988, in the fast midrank form of Sun and
  Xu 2014). scikit-learn and scipy have no paired AUROC test, so it is written here.

Subgroup metrics and fairness are in :mod:`icl_toolkit.evaluation.fairness` (fairlearn).

scikit-learn computes AUROC, AUPRC, Brier and F1; AUROC inside the bootstrap
uses the equivalent rank formula, vectorised over resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from icl_toolkit.core.errors import ConfigError

__all__ = [
    "summary",
    "expected_calibration_error",
    "choose_threshold",
    "point_metrics",
    "bootstrap_ci",
    "DeLongResult",
    "delong_test",
    "metrics_warning",
    "MIN_PATIENTS",
]


Labels = Sequence[int] | npt.NDArray[Any]
"""Outcomes, 0 or 1: a sequence or an array."""
Probabilities = Sequence[float] | npt.NDArray[Any]
"""Predicted probabilities: a sequence or an array."""


def _arrays(labels: Labels, probabilities: Probabilities) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    if y.shape != p.shape:
        raise ConfigError(f"labels and probabilities differ in length ({len(y)} vs {len(p)}).")
    if len(y) and not set(np.unique(y)) <= {0, 1}:
        raise ConfigError("labels must be 0 or 1.")
    return y, p


MIN_PATIENTS = 10
"""Fewer labelled patients than this and a discrimination metric is noise, not a measurement."""


def metrics_warning(labels: Labels) -> str | None:
    """Why discrimination metrics of these outcomes would mislead (too few patients, a class missing), or ``None``.

    Args:
        labels: the outcomes (0 or 1).

    Returns:
        One sentence to print instead of the numbers, or ``None`` when they can be read.
    """
    y = np.asarray(labels, dtype=int)
    cases = int(y.sum())
    if len(y) < MIN_PATIENTS or cases == 0 or cases == len(y):
        return (
            f"metrics not shown: {len(y)} labelled patients with {cases} cases (AUROC and AUPRC need both "
            f"classes, and below {MIN_PATIENTS} patients any value is noise); predict more patients "
            "(--limit) to measure."
        )
    return None


def summary(labels: Labels, probabilities: Probabilities) -> dict[str, Any]:
    """n, prevalence, AUROC, AUPRC and Brier score of predictions against outcomes.

    Args:
        labels: the outcomes (0 or 1).
        probabilities: the predicted probabilities, in the same order.

    Returns:
        ``{"n", "prevalence", "auroc", "auprc", "brier"}``; AUROC and AUPRC are ``None`` when only one class is
        present (they are undefined); with fewer than :data:`MIN_PATIENTS` patients or one class, a ``"warning"``
        says why the numbers should not be read (:func:`metrics_warning`).

    Raises:
        ConfigError: labels and probabilities of different lengths, labels other than 0/1, probabilities outside
            [0, 1].
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y, p = _arrays(labels, probabilities)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "prevalence": float(y.mean()) if len(y) else None,
        "auroc": None,
        "auprc": None,
        "brier": float(brier_score_loss(y, p)) if len(y) else None,
    }
    if len(np.unique(y)) == 2:
        out["auroc"] = float(roc_auc_score(y, p))
        out["auprc"] = float(average_precision_score(y, p))
    warning = metrics_warning(y) if len(y) else None
    if warning is not None:
        out["warning"] = warning
    return out


def expected_calibration_error(labels: Labels, probabilities: Probabilities, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width bins: sum over bins of (bin share) x |mean p - observed rate|."""
    y, p = _arrays(labels, probabilities)
    if not len(y):
        return float("nan")
    return float(_rowwise_ece(y[None, :], p[None, :], n_bins)[0])


def choose_threshold(labels: Labels, probabilities: Probabilities) -> float:
    """The threshold that maximises F1 (meant for a validation split, then applied to test)."""
    from sklearn.metrics import precision_recall_curve

    y, p = _arrays(labels, probabilities)
    if y.sum() == 0:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)[:-1]
    return float(thresholds[int(np.argmax(f1))])


def point_metrics(labels: Labels, probabilities: Probabilities, threshold: float = 0.5) -> dict[str, Any]:
    """AUROC, AUPRC, Brier, ECE, and F1 at ``threshold`` (plus n and prevalence)."""
    from sklearn.metrics import f1_score

    y, p = _arrays(labels, probabilities)
    out = summary(y, p)
    out["ece"] = expected_calibration_error(y, p) if len(y) else None
    out["f1"] = float(f1_score(y, (p >= threshold).astype(int), zero_division=0)) if len(y) else None
    out["threshold"] = float(threshold)
    return out


def _rank_auroc(y_pos: np.ndarray, y_neg: np.ndarray) -> np.ndarray:
    """AUROC per row from positive and negative scores ([R, m] and [R, n]), ties counted half."""
    from scipy.stats import rankdata

    m = y_pos.shape[1]
    n = y_neg.shape[1]
    ranks = rankdata(np.concatenate([y_pos, y_neg], axis=1), axis=1)
    return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)


def _rowwise_average_precision(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision per row (scikit-learn's definition: sum over distinct thresholds of the recall step
    times the precision there; tied scores form one threshold)."""
    order = np.argsort(-p, axis=1, kind="stable")
    s, lab = np.take_along_axis(p, order, axis=1), np.take_along_axis(y, order, axis=1)
    n = s.shape[1]
    tp = np.cumsum(lab, axis=1)
    last = np.ones(s.shape, dtype=bool)  # the last item of each run of tied scores
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    # each item's threshold is the end of its tie run: the nearest run end at or after it
    end = np.minimum.accumulate(np.where(last, np.arange(n), n)[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(tp, end, axis=1) / (end + 1)
    positives = lab.sum(axis=1)
    return (lab * precision_at_end).sum(axis=1) / np.maximum(positives, 1)


def _rowwise_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Expected calibration error per row: sum over bins of (bin share) x |mean p - observed rate|, which is
    sum over bins of |sum p - sum y| / n."""
    r, n = p.shape
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1) + n_bins * np.arange(r)[:, None]
    gaps = np.bincount(bins.ravel(), weights=(p - y).ravel(), minlength=r * n_bins).reshape(r, n_bins)
    return np.abs(gaps).sum(axis=1) / n


def _rowwise_f1(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 per row (0 where it is undefined, as scikit-learn's ``zero_division=0``)."""
    y = y.astype(bool)
    tp = (pred & y).sum(axis=1)
    denom = 2 * tp + (pred & ~y).sum(axis=1) + (~pred & y).sum(axis=1)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def bootstrap_ci(
    labels: Labels,
    probabilities: Probabilities,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float = 0.5,
    metrics: Sequence[str] = ("auroc", "auprc", "brier", "ece", "f1"),
) -> dict[str, dict[str, float]]:
    """Stratified bootstrap percentile intervals of the metrics.

    Cases and controls are resampled separately with replacement (keeping their
    counts), so each resample has the observed prevalence and AUROC is always defined.

    Args:
        labels: the outcomes (0 or 1), both classes present.
        probabilities: the predicted probabilities, in the same order.
        n_resamples: bootstrap resamples.
        seed: the resampling seed (the same seed gives the same intervals).
        level: the interval's coverage.
        threshold: the decision threshold of F1.
        metrics: which of ``auroc``, ``auprc``, ``brier``, ``ece``, ``f1``.

    Returns:
        ``{metric: {"value", "lo", "hi"}}``.

    Raises:
        ConfigError: inputs as for :func:`summary`, only one class present, an unknown metric.
    """
    if n_resamples < 1:
        raise ConfigError(f"The 'n_resamples' parameter must be an int >= 1. Got {n_resamples!r} instead.")
    y, p = _arrays(labels, probabilities)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not len(pos) or not len(neg):
        raise ConfigError("bootstrap_ci needs both cases and controls.")
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.choice(pos, (n_resamples, len(pos))), rng.choice(neg, (n_resamples, len(neg)))], axis=1)
    yr, pr = y[rows], p[rows]
    point = point_metrics(y, p, threshold)
    # every resample at once (one row each): the same values as scikit-learn's functions called per resample
    # (tests/evaluation/test_metrics.py), without their per-call overhead, which made 2,000 resamples take minutes
    per: dict[str, Callable[[], np.ndarray]] = {
        "auprc": lambda: _rowwise_average_precision(yr, pr),
        "brier": lambda: np.mean((pr - yr) ** 2, axis=1),
        "ece": lambda: _rowwise_ece(yr, pr),
        "f1": lambda: _rowwise_f1(yr, pr >= threshold),
    }
    tail = (1 - level) / 2
    out = {}
    for name in metrics:
        if name == "auroc":
            values = _rank_auroc(pr[:, : len(pos)], pr[:, len(pos) :])
        elif name in per:
            values = per[name]()
        else:
            raise ConfigError(f"Unknown metric {name!r}. Available: auroc, {', '.join(per)}.")
        lo, hi = np.quantile(values, [tail, 1 - tail])
        out[name] = {"value": float(point[name]), "lo": float(lo), "hi": float(hi)}
    return out


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong test of AUROC(a) - AUROC(b) on the same patients."""

    auroc_a: float
    auroc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def _midrank_components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    from scipy.stats import rankdata

    m, n = len(pos), len(neg)
    tx, ty = rankdata(pos), rankdata(neg)
    tz = rankdata(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n  # per case: share of controls it outranks
    v01 = 1.0 - (tz[m:] - ty) / m  # per control: share of cases that outrank it
    return float(auc), v10, v01


def delong_test(labels: Labels, prob_a: Probabilities, prob_b: Probabilities, level: float = 0.95) -> DeLongResult:
    """Paired DeLong test (two-sided) of the AUROC difference of two predictors on the same patients.

    Args:
        labels: the outcomes (0 or 1), both classes present.
        prob_a: predictor A's probabilities.
        prob_b: predictor B's probabilities, for the same patients in the same order.
        level: the coverage of the difference's confidence interval.

    Returns:
        Both AUROCs, their difference with its interval, the z statistic and the p-value.

    Raises:
        ConfigError: inputs of different lengths, only one class present.
    """
    from scipy.stats import norm

    y, a = _arrays(labels, prob_a)
    _, b = _arrays(labels, prob_b)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ConfigError("delong_test needs at least two cases and two controls.")
    auc_a, v10a, v01a = _midrank_components(a[pos], a[neg])
    auc_b, v10b, v01b = _midrank_components(b[pos], b[neg])
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = auc_a - auc_b
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        z, p_value = 0.0, 1.0 if diff == 0 else 0.0
    else:
        z = diff / se
        p_value = float(2 * norm.sf(abs(z)))
    half = float(norm.ppf(0.5 + level / 2)) * se
    return DeLongResult(auc_a, auc_b, diff, se, float(z), p_value, diff - half, diff + half)
