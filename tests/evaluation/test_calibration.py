"""Recalibration: the calibration slope reads over- and under-confidence; Platt keeps the ranking and fixes a
distorted scale; nothing is fit on one class."""

from __future__ import annotations

import numpy as np
import pytest

from icl_toolkit.evaluation.calibration import calibration_slope, fit_recalibrator, recalibration_rows


def _draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    risk = 1 / (1 + np.exp(-rng.normal(-1.5, 1.2, n)))
    return (rng.random(n) < risk).astype(int), risk


def test_slope_reads_confidence():
    y, p = _draw(20_000, 0)
    z = np.log(p / (1 - p))
    assert calibration_slope(y, p) == pytest.approx(1.0, abs=0.05)
    assert calibration_slope(y, 1 / (1 + np.exp(-2 * z))) == pytest.approx(0.5, abs=0.05)  # too extreme
    assert calibration_slope(y, 1 / (1 + np.exp(-0.5 * z))) == pytest.approx(2.0, abs=0.1)  # too timid
    assert np.isnan(calibration_slope(y, np.full(len(y), 0.3)))


def test_platt_and_isotonic_repair_a_distorted_scale_fit_on_validation_only():
    yv, pv = _draw(2_000, 1)
    y, p = _draw(2_000, 2)
    squash = lambda q: 0.4 + 0.2 * q  # noqa: E731  (monotone, badly calibrated)
    rows = recalibration_rows("m", y, squash(p), yv, squash(pv), n_resamples=50)
    raw, platt, iso = rows
    assert [r["method"] for r in rows] == ["raw", "platt", "isotonic"]
    assert platt["auroc"] == pytest.approx(raw["auroc"])  # strictly increasing: the ranking is unchanged
    assert platt["brier"] < raw["brier"] - 0.05 and iso["brier"] < raw["brier"] - 0.05
    assert platt["ece"] < 0.05 < raw["ece"]
    # the recalibrator is a function of the validation predictions alone
    f = fit_recalibrator("platt", yv, squash(pv))
    assert np.allclose(f(squash(p)), fit_recalibrator("platt", yv, squash(pv))(squash(p)))
    assert recalibration_rows("m", y, p, np.zeros(10, int), np.linspace(0, 1, 10)) == []
    with pytest.raises(ValueError, match="unknown recalibration"):
        fit_recalibrator("beta", yv, pv)


def test_platt_keeps_the_ranking_when_validation_ranks_the_wrong_way():
    yv, pv = _draw(300, 3)
    y, p = _draw(300, 4)
    raw, platt, _ = recalibration_rows("m", y, p, yv, 1 - pv, n_resamples=20)  # validation reversed
    assert platt["auroc"] == pytest.approx(raw["auroc"])
    f = fit_recalibrator("platt", yv, 1 - pv)
    q = f(p)
    assert np.all(np.diff(q[np.argsort(p)]) >= 0) and abs(q.mean() - yv.mean()) < 0.01  # the base rate, in order
