"""Metrics: agreement with scikit-learn, bootstrap coverage behaviour, DeLong against known values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from icl_toolkit.evaluation.metrics import (
    _rowwise_average_precision,
    _rowwise_ece,
    _rowwise_f1,
    bootstrap_ci,
    choose_threshold,
    delong_test,
    expected_calibration_error,
    point_metrics,
)


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(int)
    a = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=400) - 1.5)))   # informative
    b = 1 / (1 + np.exp(-(0.4 * y + rng.normal(size=400) - 1.5)))   # weaker
    return y, a, b


def test_point_metrics_match_sklearn(scores):
    y, a, _ = scores
    m = point_metrics(y, a, threshold=0.3)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, a))
    assert m["f1"] == pytest.approx(f1_score(y, (a >= 0.3).astype(int)))
    assert 0 <= m["ece"] <= 1 and m["n"] == 400


def test_ece_is_zero_for_perfect_calibration_and_large_when_off():
    p = np.repeat([0.1, 0.5, 0.9], 1000)
    y = np.concatenate([np.r_[np.ones(100), np.zeros(900)], np.r_[np.ones(500), np.zeros(500)],
                        np.r_[np.ones(900), np.zeros(100)]]).astype(int)
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(y, np.clip(p + 0.3, 0, 1)) > 0.2


def test_threshold_chosen_on_validation_maximises_f1(scores):
    y, a, _ = scores
    t = choose_threshold(y, a)
    best = f1_score(y, (a >= t).astype(int))
    for other in np.linspace(0.05, 0.95, 19):
        assert best >= f1_score(y, (a >= other).astype(int)) - 1e-12


def test_bootstrap_is_seeded_and_brackets_the_estimate(scores):
    y, a, _ = scores
    ci = bootstrap_ci(y, a, n_resamples=1000, seed=3)
    again = bootstrap_ci(y, a, n_resamples=1000, seed=3)
    assert ci == again
    for name, c in ci.items():
        assert c["lo"] <= c["value"] + 1e-9 and c["value"] <= c["hi"] + 1e-9, name
    width = ci["auroc"]["hi"] - ci["auroc"]["lo"]
    assert 0.05 < width < 0.25  # about 80 cases: a wide but finite interval
    # the vectorised rank AUROC equals sklearn's on the original sample
    assert ci["auroc"]["value"] == pytest.approx(roc_auc_score(y, a))


def test_delong_matches_bootstrap_variance_and_detects_a_real_difference(scores):
    y, a, b = scores
    res = delong_test(y, a, b)
    assert res.auroc_a == pytest.approx(roc_auc_score(y, a)) and res.auroc_b == pytest.approx(roc_auc_score(y, b))
    assert res.difference > 0 and res.p_value < 0.01 and res.ci_low > 0
    # the DeLong standard error agrees with a paired bootstrap of the difference
    rng = np.random.default_rng(1)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(2000):
        r = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs.append(roc_auc_score(y[r], a[r]) - roc_auc_score(y[r], b[r]))
    assert res.se == pytest.approx(np.std(diffs), rel=0.15)
    same = delong_test(y, a, a)
    assert same.difference == 0 and same.p_value == 1.0
    noise = delong_test(y, a, a + np.random.default_rng(2).normal(0, 1e-3, len(a)))
    assert noise.p_value > 0.05


def test_delong_on_a_hand_checked_case():
    """Two cases, three controls, worked on paper.

    A: cases 0.9, 0.6; controls 0.7, 0.2, 0.1 -> V10 = (1, 2/3), V01 = (1/2, 1, 1), AUROC 5/6.
    B: cases 0.8, 0.3; controls 0.5, 0.4, 0.1 -> V10 = (1, 1/3), V01 = (1/2, 1/2, 1), AUROC 2/3.
    S10: var A 1/18, var B 2/9, cov 1/9; S01: var A 1/12, var B 1/12, cov 1/24.
    Var(A - B) = (1/18 + 2/9 - 2/9) / 2 + (1/12 + 1/12 - 1/12) / 3 = 1/18; z = (1/6) / sqrt(1/18) = 1/sqrt(2).
    """
    from scipy.stats import norm

    y = [1, 1, 0, 0, 0]
    res = delong_test(y, [0.9, 0.6, 0.7, 0.2, 0.1], [0.8, 0.3, 0.5, 0.4, 0.1])
    assert res.auroc_a == pytest.approx(5 / 6) and res.auroc_b == pytest.approx(2 / 3)
    assert res.se == pytest.approx(np.sqrt(1 / 18))
    assert res.z == pytest.approx(1 / np.sqrt(2))
    assert res.p_value == pytest.approx(2 * norm.sf(1 / np.sqrt(2)))  # 0.4795
    half = norm.ppf(0.975) * np.sqrt(1 / 18)
    assert (res.ci_low, res.ci_high) == pytest.approx((1 / 6 - half, 1 / 6 + half))


@pytest.mark.parametrize("rounded", [False, True], ids=["distinct", "tied"])
def test_rowwise_bootstrap_metrics_equal_sklearn_per_resample(scores, rounded):
    """bootstrap_ci computes every resample at once; each row equals scikit-learn's (and our ECE) on that row,
    with tied scores (a model's probabilities rounded, or a few-valued baseline like the kNN vote) too."""
    y, a, _ = scores
    p = np.round(a, 1) if rounded else a
    rng = np.random.default_rng(1)
    rows = rng.choice(len(y), (60, len(y)))
    yr, pr = y[rows], p[rows]
    ap = _rowwise_average_precision(yr, pr)
    ece = _rowwise_ece(yr, pr)
    f1 = _rowwise_f1(yr, pr >= 0.3)
    for i in range(len(rows)):
        assert ap[i] == pytest.approx(average_precision_score(yr[i], pr[i]), abs=1e-12)
        bins = np.minimum((pr[i] * 10).astype(int), 9)   # the definition: bin share x |mean p - rate|
        by_bin = sum((bins == b).mean() * abs(pr[i][bins == b].mean() - yr[i][bins == b].mean())
                     for b in np.unique(bins))
        assert ece[i] == pytest.approx(by_bin, abs=1e-12)
        assert f1[i] == pytest.approx(f1_score(yr[i], (pr[i] >= 0.3).astype(int), zero_division=0), abs=1e-12)
    # a row predicting no positives has F1 0, as zero_division=0 gives
    assert _rowwise_f1(yr[:1], np.zeros_like(pr[:1], dtype=bool))[0] == 0.0


def test_too_few_patients_or_one_class_come_with_a_warning(tmp_path, invoke, small_cohort, tiny_model_dir):
    """n=2 printed AUROC=0.000 without a word; now the numbers carry a warning and icl predict prints it instead."""
    from icl_toolkit.data.cohort import write_cohort
    from icl_toolkit.evaluation.metrics import metrics_warning, summary

    assert "2 labelled patients with 1 cases" in summary([0, 1], [0.9, 0.1])["warning"]
    assert "0 cases" in metrics_warning([0] * 30)
    assert metrics_warning([0] * 20 + [1] * 5) is None and "warning" not in summary([0] * 20 + [1] * 5, [0.5] * 25)
    write_cohort(small_cohort[:3], tmp_path / "c.jsonl")
    code, text = invoke(["predict", "--cohort", tmp_path / "c.jsonl", "--demos", "none", "--model", tiny_model_dir,
                         "--out", tmp_path / "p.jsonl"])
    assert code == 0 and "metrics not shown: 3 labelled patients" in text and "AUROC=" not in text, text
