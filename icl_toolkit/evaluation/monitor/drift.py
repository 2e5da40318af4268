"""Drift tests on what a served predictor sees, one window against a reference (:mod:`.reference`).

Library methods throughout (SciPy, scikit-learn); the choices follow Evidently's defaults for large samples
(normalised Wasserstein distance for numbers, Jensen-Shannon distance for categories), which call the same SciPy
functions:

- :func:`numeric_drift`: Wasserstein distance (``scipy.stats.wasserstein_distance``) between the window's and the
  reference's values, in units of the reference's standard deviation: 0.1 means the distributions are a tenth of
  a standard deviation apart on average; with the two-sample Kolmogorov-Smirnov test's p-value
  (``scipy.stats.ks_2samp``), so that an alert needs both a shift that matters and one that is not sampling noise
  (in a window of 500, two samples of one population are often 0.1 SD apart). Used for each numeric input and
  for the predicted probabilities. It replaces the population stability index written here before;
- :func:`code_mix`: each code's share of the window's code occurrences against its share in the reference, a
  two-proportion z-test per code (``scipy.stats.norm``), Benjamini-Hochberg adjusted across codes
  (``scipy.stats.false_discovery_control``); a code counts as shifted when its adjusted p-value is below ``alpha``
  and its share changed by at least ``min_ratio`` either way;
- :func:`vocabulary_distance`: Jensen-Shannon distance (``scipy.spatial.distance.jensenshannon``, base 2: 0 the
  same, 1 disjoint) between the window's and the reference's events per vocabulary;
- :func:`domain_classifier_auroc`: a multivariate test: how well a classifier (LightGBM, as NannyML's domain
  classifier; 3-fold cross-validated with scikit-learn) tells the window's patients from the reference's
  on all logged inputs together (numbers, sex, vocabulary mix, unseen-code share, the 50 commonest codes); 0.5
  is no drift, 1 complete separation;
- :func:`shift_in_sd`: how far a window's mean falls below the reference's, in reference standard deviations
  (the queries' similarity to their demos against the pool's own patients').
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["numeric_drift", "code_mix", "vocabulary_distance", "domain_classifier_auroc", "shift_in_sd"]


def numeric_drift(reference: Any, current: Any) -> tuple[float | None, float | None]:
    """``(distance, p)``: the Wasserstein distance between the two samples over the reference's standard deviation
    (the plain distance when the reference is constant), and the Kolmogorov-Smirnov test's p-value; ``(None,
    None)`` when either is empty."""
    from scipy.stats import ks_2samp, wasserstein_distance

    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if not len(ref) or not len(cur):
        return None, None
    sd = float(ref.std())
    return float(wasserstein_distance(ref, cur) / (sd if sd > 0 else 1.0)), float(ks_2samp(ref, cur).pvalue)


def code_mix(
    reference: Mapping[str, int],
    current: Mapping[str, int],
    *,
    alpha: float = 0.01,
    min_ratio: float = 1.5,
    top: int = 10,
) -> dict[str, Any]:
    """Per-code frequency shifts between two code-occurrence counts (codes of the reference only).

    Returns:
        ``tested`` (codes), ``shifted`` (their number), and ``top``: the most changed shifted codes, each with its
        reference and window share and adjusted p-value.
    """
    from scipy.stats import false_discovery_control, norm

    codes = sorted(reference)
    r = np.array([reference[c] for c in codes], dtype=float)
    x = np.array([current.get(c, 0) for c in codes], dtype=float)
    R, X = r.sum(), x.sum()
    if not len(codes) or R == 0 or X == 0:
        return {"tested": 0, "shifted": 0, "top": []}
    pr, px = r / R, x / X
    pooled = (r + x) / (R + X)
    se = np.sqrt(pooled * (1 - pooled) * (1 / R + 1 / X))
    z = np.divide(px - pr, se, out=np.zeros_like(se), where=se > 0)
    q = false_discovery_control(2 * norm.sf(np.abs(z)), method="bh")
    with np.errstate(divide="ignore"):
        log_ratio = np.log(np.divide(px, pr, out=np.zeros_like(px), where=pr > 0))
    shifted = (q < alpha) & (np.abs(log_ratio) >= np.log(min_ratio))
    order = np.argsort(-np.abs(px - pr))
    listed = [
        {"code": codes[i], "reference_share": float(pr[i]), "window_share": float(px[i]), "q": float(q[i])}
        for i in order
        if shifted[i]
    ][:top]
    return {"tested": len(codes), "shifted": int(shifted.sum()), "top": listed}


def vocabulary_distance(reference: Mapping[str, int], current: Mapping[str, int]) -> float | None:
    """Jensen-Shannon distance (base 2) between two counts of events per vocabulary (None when either is empty)."""
    from scipy.spatial.distance import jensenshannon

    systems = sorted(set(reference) | set(current))
    a = np.array([reference.get(s, 0) for s in systems], dtype=float)
    b = np.array([current.get(s, 0) for s in systems], dtype=float)
    if a.sum() == 0 or b.sum() == 0:
        return None
    return float(jensenshannon(a, b, base=2))


def _features(rows: Sequence[dict[str, Any]], systems: list[str], codes: list[str]) -> np.ndarray:
    out = np.zeros((len(rows), 6 + len(systems) + len(codes)))
    col = {c: i for i, c in enumerate(codes)}
    for i, r in enumerate(rows):
        vocab = r.get("vocab") or {}
        total = sum(vocab.values()) or 1
        distinct = r.get("distinct_codes") or 0
        out[i, :6] = (
            r["age"],
            r["events"],
            r["history_days"],
            r.get("sex") == "F",
            distinct,
            (r.get("unseen_codes") or 0) / distinct if distinct else 0.0,
        )
        out[i, 6 : 6 + len(systems)] = [vocab.get(s, 0) / total for s in systems]
        for c in r.get("codes") or ():
            if c in col:
                out[i, 6 + len(systems) + col[c]] = 1.0
    return out


def domain_classifier_auroc(
    reference: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]], *, max_rows: int = 1000, seed: int = 0
) -> float | None:
    """Cross-validated AUROC of a classifier telling ``current`` rows from ``reference`` rows (monitor-log rows:
    inputs, sex, vocabulary, codes), at most ``max_rows`` of each side (seeded sample). None with fewer than 20
    rows on a side."""
    from lightgbm import LGBMClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if len(reference) < 20 or len(current) < 20:
        return None
    rng = np.random.default_rng(seed)
    ref = [reference[i] for i in rng.permutation(len(reference))[:max_rows]]
    cur = [current[i] for i in rng.permutation(len(current))[:max_rows]]
    systems = sorted(
        {s for r in ref for s in (r.get("vocab") or {})} | {s for r in cur for s in (r.get("vocab") or {})}
    )
    common = Counter(c for r in ref for c in (r.get("codes") or ()))
    # codes are named in the log only when the server knew its pool; otherwise they are left out on both sides
    with_codes = any(r.get("unseen_codes") is not None for r in cur)
    codes = [c for c, _ in common.most_common(50)] if with_codes else []
    X = np.vstack([_features(ref, systems, codes), _features(cur, systems, codes)])
    if not with_codes:
        X[:, 5] = 0.0  # the unseen-code share
    y = np.r_[np.zeros(len(ref)), np.ones(len(cur))]
    clf = LGBMClassifier(
        n_estimators=60, num_leaves=15, learning_rate=0.1, min_child_samples=10, random_state=seed, verbose=-1, n_jobs=1
    )
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    p = cross_val_predict(clf, X, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def shift_in_sd(reference: Any, current: Any) -> float | None:
    """``(mean(reference) - mean(current)) / sd(reference)``: positive when the window's values fall below the
    reference's (None when either is empty)."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if not len(ref) or not len(cur):
        return None
    sd = float(ref.std())
    return float((ref.mean() - cur.mean()) / (sd if sd > 0 else 1.0))
