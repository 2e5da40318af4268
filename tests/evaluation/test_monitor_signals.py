"""The monitor's signals against direct computations: estimated performance (expected AUROC, calibrator, intervals),
drift tests (Wasserstein + KS, code mix with Benjamini-Hochberg, Jensen-Shannon, domain classifier), the code
fields of the log and the pool reference, and the report's calibration input."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.synth import SynthConfig, generate_cohort
from icl_toolkit.evaluation.monitor import MonitorLog, monitor_report, parse_window
from icl_toolkit.evaluation.monitor.drift import (
    code_mix,
    domain_classifier_auroc,
    numeric_drift,
    shift_in_sd,
    vocabulary_distance,
)
from icl_toolkit.evaluation.monitor.estimate import estimate_performance, expected_auroc, fit_calibrator
from icl_toolkit.evaluation.monitor.log import PREDICTIONS, code_key, patient_row
from icl_toolkit.evaluation.monitor.reference import pool_reference

KEY = b"s" * 32
T0 = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_expected_auroc_is_the_pairwise_expectation():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(40), 1)  # ties included
    q = rng.random(40)
    num = den = 0.0
    for i in range(40):
        for j in range(40):
            if i != j:
                w = q[i] * (1 - q[j])
                den += w
                num += w * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    assert expected_auroc(s, q) == pytest.approx(num / den, abs=1e-12)
    assert math.isnan(expected_auroc(s, np.ones(40)))  # no negative can occur: no pair


def test_estimate_tracks_the_realized_auroc_of_a_calibrated_model():
    """Outcomes drawn from the probabilities: the estimate is within 0.05 of the realized AUROC, the realized value
    lies in the interval, and the MC draws centre on the expected AUROC."""
    rng = np.random.default_rng(1)
    p = _sigmoid(rng.normal(-1.8, 1.0, 2000))
    y = (rng.random(2000) < p).astype(int)
    est = estimate_performance(p, resamples=300, seed=3)
    from sklearn.metrics import roc_auc_score

    realized = roc_auc_score(y, p)
    assert abs(est["estimated_auroc"] - realized) < 0.05
    assert est["estimated_auroc_lo"] < realized < est["estimated_auroc_hi"]
    assert est["estimated_auroc_lo"] < est["estimated_auroc"] < est["estimated_auroc_hi"]
    assert est["estimated_rate"] == pytest.approx(p.mean())
    assert est["estimated_rate_lo"] < y.mean() < est["estimated_rate_hi"]
    assert est["estimated_calibration_error"] == pytest.approx(0.0)


def test_calibrator_undoes_overconfidence():
    """A model twice as confident as it should be (log-odds doubled): Platt scaling fit on outcomes brings its
    probabilities back to the true ones, and the estimate then matches the realized AUROC."""
    rng = np.random.default_rng(2)
    true = _sigmoid(rng.normal(-1.8, 0.8, 3000))
    raw = _sigmoid(2 * np.log(true / (1 - true)))
    y = (rng.random(3000) < true).astype(int)
    cal = fit_calibrator(raw[:1500], y[:1500])
    assert np.abs(cal(raw[1500:]) - true[1500:]).mean() < 0.02
    est = estimate_performance(raw[1500:], cal, seed=0)
    naive = estimate_performance(raw[1500:], None, seed=0)
    from sklearn.metrics import roc_auc_score

    realized = roc_auc_score(y[1500:], raw[1500:])
    assert abs(est["estimated_auroc"] - realized) < abs(naive["estimated_auroc"] - realized)
    assert est["estimated_calibration_error"] == pytest.approx(raw[1500:].mean() - cal(raw[1500:]).mean())


def test_numeric_drift_is_scipys_wasserstein_over_the_reference_sd_with_ks():
    from scipy.stats import ks_2samp, wasserstein_distance

    rng = np.random.default_rng(3)
    ref, same, moved = rng.normal(70, 8, 2000), rng.normal(70, 8, 500), rng.normal(74, 8, 500)
    d, p = numeric_drift(ref, moved)
    assert d == pytest.approx(wasserstein_distance(ref, moved) / ref.std())
    assert p == pytest.approx(ks_2samp(ref, moved).pvalue)
    assert d == pytest.approx(0.5, abs=0.1) and p < 1e-6
    d, p = numeric_drift(ref, same)
    assert d < 0.15 and p > 0.001
    assert numeric_drift([], same) == (None, None)


def test_code_mix_z_tests_with_benjamini_hochberg():
    ref = {"A": 500, "B": 300, "C": 200, "D": 10}
    cur = {"A": 100, "B": 60, "C": 120, "D": 2}  # C doubled its share
    out = code_mix(ref, cur, alpha=0.01, min_ratio=1.5)
    R, X = sum(ref.values()), sum(cur.values())
    from scipy.stats import norm

    pvals = []
    for c in "ABCD":
        pr, px = ref[c] / R, cur.get(c, 0) / X
        pooled = (ref[c] + cur.get(c, 0)) / (R + X)
        z = (px - pr) / math.sqrt(pooled * (1 - pooled) * (1 / R + 1 / X))
        pvals.append(2 * norm.sf(abs(z)))
    order = np.argsort(pvals)  # Benjamini-Hochberg by hand: q_(i) = min_{j>=i} p_(j) m / j
    q = np.empty(4)
    running = 1.0
    for rank in range(4, 0, -1):
        i = order[rank - 1]
        running = min(running, pvals[i] * 4 / rank)
        q[i] = running
    assert out["tested"] == 4 and out["shifted"] == 1
    assert out["top"][0]["code"] == "C" and out["top"][0]["q"] == pytest.approx(q[2])
    assert out["top"][0]["window_share"] == pytest.approx(120 / X)
    assert code_mix(ref, {"Z": 5})["shifted"] == 0  # nothing of the reference seen: nothing to test


def test_vocabulary_distance_is_jensen_shannon_base_2():
    a, b = {"ICD10CM": 20, "LOINC": 80}, {"ICD10CM": 10, "LOINC": 80, "ICD9CM": 10}
    P, Q = np.array([0.2, 0.8, 0.0]), np.array([10, 80, 10]) / 100
    M = (P + Q) / 2

    def kl(x, y):
        return sum(xi * math.log2(xi / yi) for xi, yi in zip(x, y) if xi > 0)

    assert vocabulary_distance(a, b) == pytest.approx(math.sqrt(0.5 * kl(P, M) + 0.5 * kl(Q, M)))
    assert vocabulary_distance(a, a) == pytest.approx(0.0, abs=1e-7)
    assert vocabulary_distance({}, b) is None


def test_domain_classifier_and_shift_in_sd():
    rng = np.random.default_rng(4)

    def rows(n, age_mean):
        return [{"age": float(a), "events": int(e), "history_days": int(h), "sex": "F" if f else "M",
                 "vocab": {"LOINC": int(e)}, "distinct_codes": 10, "unseen_codes": 0, "codes": []}
                for a, e, h, f in zip(rng.normal(age_mean, 6, n), rng.poisson(100, n), rng.normal(3000, 500, n),
                                      rng.random(n) < 0.5)]

    ref = rows(600, 72)
    assert domain_classifier_auroc(ref, rows(400, 72)) < 0.6
    assert domain_classifier_auroc(ref, rows(400, 84)) > 0.85
    assert domain_classifier_auroc(ref, rows(10, 72)) is None
    assert shift_in_sd([1.0, 3.0], [0.0, 1.0]) == pytest.approx(1.5)


@pytest.fixture(scope="module")
def cohort():
    return generate_cohort(SynthConfig(n=700, seed=5, rationales=False))


def test_log_names_common_codes_only_and_counts_unseen(cohort, tmp_path):
    pool, stream = cohort[:400], cohort[400:]
    log = MonitorLog(tmp_path / "mon", KEY, pool=pool, min_code_patients=5)
    patient = stream[0]
    rare = patient.history()[0]
    patient.events.append(type(rare)(date=rare.date, kind="diagnosis", code="ZZZ.1", system="ICD10CM", name="x"))
    log.record_predictions([patient], [{"probability": 0.2, "demos": []}])
    log.close()
    rec = json.loads((tmp_path / "mon" / PREDICTIONS).read_text().splitlines()[0])
    counts = log.pool_codes
    assert counts is not None
    distinct = {code_key(e.system, e.code) for e in patient.history()}
    assert set(rec["codes"]) == {c for c in distinct if counts.get(c, 0) >= 5}
    assert "ICD10CM/ZZZ.1" not in rec["codes"] and rec["unseen_codes"] == sum(c not in counts for c in distinct) >= 1
    assert rec["distinct_codes"] == len(distinct) and sum(rec["vocab"].values()) == len(patient.history())
    assert patient.patient_id not in json.dumps(rec)


def test_pool_reference_summarises_without_ids(cohort):
    pool = cohort[:400]
    ref = pool_reference(pool, max_rows=100, min_code_patients=5)
    text = json.dumps(ref)
    assert all(p.patient_id not in text and p.birth_date.isoformat() not in text for p in pool)
    assert len(ref["rows"]) == 100 and ref["patients"] == 400 and ref["neighbours"] == []
    assert min(ref["code_patients"].values()) >= 5
    assert ref["prevalence"] == pytest.approx(np.mean([p.label for p in pool]))
    assert ref["rows"][0].keys() == patient_row(pool[0], {}, 5).keys()


def test_report_calibration_file_errors_and_as_of(cohort, tmp_path):
    stream = cohort[400:]
    log = MonitorLog(tmp_path / "mon", KEY)
    log.record_predictions(stream[:100], [{"probability": 0.1, "demos": []}] * 100, when=T0)
    log.record_predictions(stream[100:200], [{"probability": 0.2, "demos": []}] * 100, when=T0 + dt.timedelta(days=40))
    log.close()
    bad = tmp_path / "cal.jsonl"
    bad.write_text('{"probability": 0.1, "label": 0}\nnot json\n')
    with pytest.raises(ConfigError, match=r"cal.jsonl, line 2: not a prediction record"):
        monitor_report(tmp_path / "mon", parse_window("30d"), calibration=bad)
    bad.write_text('{"probability": 0.1, "label": 0}\n' * 40)
    with pytest.raises(ConfigError, match="needs at least 30 with both outcomes"):
        monitor_report(tmp_path / "mon", parse_window("30d"), calibration=bad)
    rep = monitor_report(tmp_path / "mon", parse_window("30d"), as_of=T0 + dt.timedelta(days=1))
    assert rep["predictions"] == 100 and len(rep["windows"]) == 1
    assert rep["calibrated_on"]["source"].startswith("none")
