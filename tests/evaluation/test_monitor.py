"""Monitoring a served predictor: pseudonyms, the log (no identifiers, survives interruption), feedback over
HTTP, the windowed report and its alerts on drifting and stable streams, and `icl monitor`."""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.synth import SynthConfig, generate_cohort
from icl_toolkit.data.synth.generate import Disparity
from icl_toolkit.evaluation.monitor import (
    AlertSettings,
    MonitorLog,
    Pseudonymizer,
    load_key,
    monitor_report,
    parse_window,
)
from icl_toolkit.evaluation.monitor.log import FEEDBACK, PREDICTIONS, FeedbackRejected, read_log

KEY = b"k" * 32
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def people():
    """A reference pool and a stream population (with true risks to predict and outcomes to report)."""
    ps = generate_cohort(SynthConfig(n=2400, seed=11, rationales=False, disparity=Disparity(share=0.3)))
    return ps[:600], ps[600:]


def _pred(p, rng=None, shift=0.0):
    return {"probability": float(np.clip(p.metadata["true_risk"] + shift, 0.001, 0.999)), "model_id": "m",
            "prompt_hash": "sha256:x", "template": "zero_shot", "demos": []}


def _stream(log, patients, day, outcomes=None, shift=0.0):
    """Log predictions of ``patients`` on ``day`` and report their outcomes (labels unless given)."""
    when = T0 + dt.timedelta(days=day)
    log.record_predictions(patients, [_pred(p, shift=shift) for p in patients], when=when)
    for i, p in enumerate(patients):
        y = p.label if outcomes is None else outcomes[i]
        log.record_feedback(p.patient_id, y, p.index_date, when=when)


def test_pseudonyms_are_stable_under_a_key_and_unlinkable_without_it():
    a, b = Pseudonymizer(KEY), Pseudonymizer(b"z" * 32)
    assert a("P1") == a("P1") and len(a("P1")) == 24
    assert a("P1") != a("P2")
    assert a("P1") != b("P1")  # another key: no link between the two logs
    import hashlib

    assert a("P1") not in (hashlib.sha256(b"P1").hexdigest()[:24], hashlib.md5(b"P1").hexdigest()[:24])
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        Pseudonymizer(b"short")


def test_key_file_is_created_private_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("ICL_MONITOR_KEY", raising=False)
    k = load_key(tmp_path / "m.key")
    assert load_key(tmp_path / "m.key") == k and len(k) == 64
    assert (os.stat(tmp_path / "m.key").st_mode & 0o777) == 0o600
    monkeypatch.setenv("ICL_MONITOR_KEY", "x" * 40)
    assert load_key(tmp_path / "m.key") == b"x" * 40


def test_log_holds_no_identifiers_or_history(people, tmp_path):
    pool, stream = people
    log = MonitorLog(tmp_path / "mon", KEY, model={"model": "m"})
    batch = stream[:40]
    shown = [{"patient_id": pool[0].patient_id, "score": 0.8, "label": 1},
             {"patient_id": pool[1].patient_id, "score": 0.6, "label": 0}]
    log.record_predictions(batch, [_pred(p) | {"demos": shown} for p in batch])
    log.record_feedback(batch[0].patient_id, 1, dt.date(2027, 5, 1))
    log.close()
    text = (tmp_path / "mon" / PREDICTIONS).read_text() + (tmp_path / "mon" / FEEDBACK).read_text()
    for p in [*batch, pool[0], pool[1]]:
        assert p.patient_id not in text
        assert p.birth_date.isoformat() not in text
        assert p.index_date.isoformat() not in text
        for e in p.history()[:5]:
            assert e.name not in text and f'"{e.code}"' not in text
    rec = json.loads(text.splitlines()[0])
    assert set(rec) == {"ts", "id", "probability", "model_id", "model_hash", "prompt_hash", "template", "demos",
                        "demo_vote", "demo_similarity", "age", "age_band", "sex", "groups", "events", "history_days",
                        "vocab", "distinct_codes", "unseen_codes", "codes"}
    assert rec["codes"] == [] and rec["unseen_codes"] is None  # no pool given: no code is named
    assert rec["demos"] == [Pseudonymizer(KEY)(p.patient_id) for p in pool[:2]]
    assert rec["groups"]["access"] in ("limited", "standard")
    assert (rec["demo_vote"], rec["demo_similarity"]) == (0.5, 0.7)  # the vote the model follows, the pool's fit
    for p in pool[:2]:
        assert p.patient_id not in text


def test_feedback_rules_and_interrupted_writes(people, tmp_path):
    _, stream = people
    log = MonitorLog(tmp_path / "mon", KEY)
    log.record_predictions(stream[:3], [_pred(p) for p in stream[:3]])
    pid = stream[0].patient_id
    assert log.record_feedback(pid, 1, dt.date(2027, 1, 1)) == "recorded"
    assert log.record_feedback(pid, 1, dt.date(2027, 1, 1)) == "duplicate"  # idempotent
    with pytest.raises(ValueError, match="recorded for this patient before"):
        log.record_feedback(pid, 0, dt.date(2027, 1, 1))
    with pytest.raises(KeyError):
        log.record_feedback("never-seen", 0, dt.date(2027, 1, 1))
    # a batch is all or nothing: one contradiction inside it (or an unknown id) and nothing of it is written
    batch = [(stream[1].patient_id, 1, dt.date(2027, 1, 1)), (stream[1].patient_id, 0, dt.date(2027, 1, 1)),
             ("never-seen", 1, dt.date(2027, 1, 1))]
    with pytest.raises(FeedbackRejected) as rejected:
        log.record_outcomes(batch)
    assert rejected.value.unknown == [2] and [i for i, _ in rejected.value.conflicts] == [1]
    assert len(log.outcomes) == 1  # nothing of the refused batch was added
    done = log.record_outcomes([(pid, 1, dt.date(2027, 1, 1)), (stream[2].patient_id, 0, dt.date(2027, 1, 2)),
                                (stream[2].patient_id, 0, dt.date(2027, 1, 2))])
    assert (done.recorded, done.duplicates) == (1, 2)
    log.close()
    assert len(read_log(tmp_path / "mon" / FEEDBACK)[0]) == 2
    # a writer killed mid-line: the torn line is skipped, earlier and later records stay readable
    with open(tmp_path / "mon" / PREDICTIONS, "ab") as fh:
        fh.write(b'{"ts":"2026-01-01T00:00:00+00:00","id":"abc","probab')
    log = MonitorLog(tmp_path / "mon", KEY)  # reopened after the crash: knows what was logged
    assert log.record_feedback(stream[1].patient_id, 0, dt.date(2027, 1, 1)) == "recorded"
    log.record_predictions(stream[3:5], [_pred(p) for p in stream[3:5]])
    log.close()
    records, bad = read_log(tmp_path / "mon" / PREDICTIONS)
    assert len(records) == 5 and bad == 1


def test_window():
    assert parse_window("30d") == dt.timedelta(days=30) and parse_window("12h") == dt.timedelta(hours=12)
    with pytest.raises(ConfigError, match="--window"):
        parse_window("soon")


def test_stable_stream_trips_no_alert(people, tmp_path):
    pool, stream = people
    log = MonitorLog(tmp_path / "mon", KEY)
    for w in range(4):
        _stream(log, stream[w * 400:(w + 1) * 400], day=30 * w + 1)
    log.close()
    rep = monitor_report(tmp_path / "mon", parse_window("30d"), pool=pool, settings=AlertSettings(gap_resamples=40))
    assert [w["volume"] for w in rep["windows"]] == [400] * 4
    assert rep["alerts"] == [], rep["alerts"]
    assert all(w["auroc"] > 0.7 for w in rep["windows"])


def test_drifting_stream_trips_the_matching_alerts(people, tmp_path):
    pool, stream = people
    log = MonitorLog(tmp_path / "mon", KEY)
    _stream(log, stream[:400], day=1)                              # window 0: like the pool
    older = [p for p in stream[400:1400] if p.age_at_index >= 80][:300]
    _stream(log, older, day=31)                                    # window 1: older patients
    rest = stream[1400:1800]
    rng = np.random.default_rng(1)
    shifted = [int(p.label or rng.random() < 0.25) for p in rest]  # window 2: many more outcomes than predicted
    _stream(log, rest, day=61, outcomes=shifted)
    log.close()
    rep = monitor_report(tmp_path / "mon", parse_window("30d"), pool=pool, settings=AlertSettings(gap_resamples=20))
    fired = {(a["window"], a["metric"]) for a in rep["alerts"]}
    assert (1, "input_age") in fired
    assert not any(w == 0 for w, _ in fired)
    assert {(2, "calibration_error"), (2, "prevalence_shift")} <= fired
    assert not any(m.startswith("input") for w, m in fired if w == 2)  # same input mix as the pool
    # thresholds are configurable: loose ones silence every alert
    loose = monitor_report(tmp_path / "mon", parse_window("30d"), pool=pool,
                           settings=AlertSettings(input_drift_max=50, prediction_drift_max=50, domain_auroc_max=1,
                                                  calibration_max=0.9, prevalence_shift_max=0.9, gap_resamples=20))
    assert loose["alerts"] == []


def test_subgroup_gap_alert(people, tmp_path):
    pool, stream = people
    log = MonitorLog(tmp_path / "mon", KEY)
    batch = stream[:800]
    rng = np.random.default_rng(2)
    # a predictor that is noise for the limited-access group
    preds = [_pred(p) if p.groups["access"] == "standard" else _pred(p) | {"probability": float(rng.random() * 0.3)}
             for p in batch]
    log.record_predictions(batch, preds, when=T0)
    for p in batch:
        log.record_feedback(p.patient_id, p.label, p.index_date, when=T0)
    log.close()
    rep = monitor_report(tmp_path / "mon", parse_window("30d"), pool=pool,
                         settings=AlertSettings(calibration_max=0.9, prevalence_shift_max=0.9, gap_resamples=40))
    assert [a["metric"] for a in rep["alerts"]] == ["gap_access"]
    assert rep["windows"][0]["gaps"]["access"] > 0.15


def test_icl_monitor_cli(people, tmp_path, invoke):
    from icl_toolkit.data.cohort import write_cohort

    pool, stream = people
    log = MonitorLog(tmp_path / "mon", KEY)
    _stream(log, stream[:300], day=1)
    _stream(log, [p for p in stream[300:] if p.age_at_index >= 80][:200], day=9)
    log.close()
    write_cohort(pool, tmp_path / "pool.jsonl")
    (tmp_path / "alerts.toml").write_text("input_drift_max = 0.25\nmin_outcomes = 50\ngap_resamples = 20\n")
    code, text = invoke(["monitor", "--dir", tmp_path / "mon", "--window", "7d", "--pool", tmp_path / "pool.jsonl",
                         "--alerts", tmp_path / "alerts.toml", "--fail-on-alert"])
    assert code == 3, text
    assert "input drift: age moved" in text
    out = tmp_path / "mon" / "report"
    data = json.loads((out / "monitor.json").read_text())
    assert data["settings"]["input_drift_max"] == 0.25 and len(data["windows"]) == 2
    assert (out / "monitor.png").stat().st_size > 10_000 and "monitor.png" in (out / "index.html").read_text()
    code, text = invoke(["monitor", "--dir", tmp_path / "mon", "--window", "7d", "--as-of", "2026-01-05",
                         "--out", tmp_path / "then"])  # what the log held on Jan 5: the first batch only
    assert code == 0, text
    assert json.loads((tmp_path / "then" / "monitor.json").read_text())["predictions"] == 300
    (tmp_path / "bad.toml").write_text("psi_max = 1\n")  # the PSI threshold of earlier releases
    code, text = invoke(["monitor", "--dir", tmp_path / "mon", "--alerts", tmp_path / "bad.toml"])
    assert code == 1 and "bad.toml: psi_max" in text and "input_drift_max" in text
    code, text = invoke(["monitor", "--dir", tmp_path / "empty"])
    assert code == 1 and "no predictions logged yet" in text


def test_windows_report_the_demos_vote_and_similarity(people, tmp_path):
    """Per window, the mean share of positive demos shown and their mean similarity (the signals only a
    retrieval-based predictor has); a prediction without demos counts in neither."""
    pool, stream = people
    log = MonitorLog(tmp_path / "mon", KEY)
    close = [{"patient_id": pool[0].patient_id, "score": 0.9, "label": 1},
             {"patient_id": pool[1].patient_id, "score": 0.7, "label": 1}]
    far = [{"patient_id": pool[2].patient_id, "score": 0.3, "label": 0},
           {"patient_id": pool[3].patient_id, "score": 0.1, "label": 1}]
    log.record_predictions(stream[:4], [_pred(p) | {"demos": close} for p in stream[:4]], when=T0)
    log.record_predictions(stream[4:5], [_pred(stream[4])], when=T0)  # zero-shot: no demos
    log.record_predictions(stream[5:9], [_pred(p) | {"demos": far} for p in stream[5:9]],
                           when=T0 + dt.timedelta(days=31))
    log.close()
    w0, w1 = monitor_report(tmp_path / "mon", parse_window("30d"), pool=pool)["windows"]
    assert (w0["mean_demo_vote"], w0["mean_demo_similarity"]) == pytest.approx((1.0, 0.8))
    assert (w1["mean_demo_vote"], w1["mean_demo_similarity"]) == pytest.approx((0.5, 0.2))
