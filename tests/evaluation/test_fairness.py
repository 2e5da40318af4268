"""Fairness report: equal to fairlearn's direct computation, calibration against scikit-learn, excess gaps,
and the disparity cohort."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.synth import SynthConfig, generate_cohort
from icl_toolkit.data.synth.generate import Disparity, parse_disparity
from icl_toolkit.evaluation.fairness import (
    age_band,
    calibration_intercept,
    calibration_slope,
    excess_gap,
    fairness_report,
    gaps_markdown,
    group_attributes,
    load_cache,
    plot_fairness,
    save_cache,
    subgroup_frame,
    subgroups_markdown,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    n = 300
    y = (rng.random(n) < 0.25).astype(int)
    group = np.where(rng.random(n) < 0.4, "limited", "standard")
    # a predictor that separates outcomes well in one group and poorly in the other
    signal = np.where(group == "standard", 1.5, 0.3)
    p = 1 / (1 + np.exp(-(-1.2 + signal * (y - 0.5) + rng.normal(0, 1, n))))
    even = 1 / (1 + np.exp(-(-1.2 + 1.0 * (y - 0.5) + rng.normal(0, 1, n))))
    return y, p, even, group


def test_equal_to_fairlearn_direct(data):
    y, p, _, group = data
    rep = fairness_report({"m": p}, y, {"access": group}, thresholds={"m": 0.3}, n_boot=0)
    direct = MetricFrame(metrics={"auroc": roc_auc_score, "auprc": average_precision_score,
                                  "brier": brier_score_loss},
                         y_true=y, y_pred=p, sensitive_features=group)
    pred = (p >= 0.3).astype(int)
    rates = MetricFrame(metrics={"selection_rate": selection_rate, "tpr": true_positive_rate,
                                 "fpr": false_positive_rate}, y_true=y, y_pred=pred, sensitive_features=group)
    for row in rep.subgroups:
        g = row["value"]
        for m in ("auroc", "auprc", "brier"):
            assert row[m] == pytest.approx(direct.by_group.loc[g, m], abs=1e-12)
        for m in ("selection_rate", "tpr", "fpr"):
            assert row[m] == pytest.approx(rates.by_group.loc[g, m], abs=1e-12)
        assert row["n"] == int((group == g).sum()) and row["cases"] == int(y[group == g].sum())
    (gap,) = rep.gaps
    assert gap["auroc_gap"] == pytest.approx(direct.difference()["auroc"], abs=1e-12)
    assert gap["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=group))
    assert gap["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=group))
    assert gap["lowest_auroc_group"] == "limited"


def test_bootstrap_intervals_are_fairlearns(data):
    y, p, _, group = data
    rep = fairness_report({"m": p}, y, {"access": group}, n_boot=40, seed=3)
    direct = MetricFrame(metrics={"auroc": roc_auc_score}, y_true=y, y_pred=p, sensitive_features=group,
                         n_boot=40, ci_quantiles=[0.025, 0.975], random_state=3)
    for row in rep.subgroups:
        assert row["auroc_lo"] == pytest.approx(direct.by_group_ci[0].loc[row["value"], "auroc"])
        assert row["auroc_hi"] == pytest.approx(direct.by_group_ci[1].loc[row["value"], "auroc"])
        assert row["auroc_lo"] <= row["auroc"] <= row["auroc_hi"]
    (gap,) = rep.gaps
    assert gap["auroc_gap_lo"] == pytest.approx(direct.difference_ci()[0]["auroc"])
    assert gap["auroc_gap_lo"] <= gap["auroc_gap"] <= gap["auroc_gap_hi"]


def test_subgroup_frame_computes_only_the_metrics_asked(data):
    y, p, _, group = data
    only = subgroup_frame(y, p, group, n_boot=40, seed=3, metrics=["auroc"])
    full = subgroup_frame(y, p, group, n_boot=40, seed=3)
    assert list(only.by_group.columns) == ["auroc"]
    # the same resamples whichever metrics ride along: the AUROC interval is unchanged
    assert only.difference_ci()[0]["auroc"] == pytest.approx(full.difference_ci()[0]["auroc"])
    with pytest.raises(ConfigError, match="unknown subgroup metric.*auroc_gap"):
        subgroup_frame(y, p, group, n_boot=0, metrics=["auroc_gap"])


def test_calibration_matches_logistic_regression():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.9, 500)
    y = (rng.random(500) < np.clip(p * 1.3, 0, 1)).astype(int)
    lp = np.log(p / (1 - p))
    fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(lp[:, None], y)
    assert calibration_slope(y, p) == pytest.approx(fit.coef_[0, 0], abs=1e-4)
    # intercept with the slope fixed at 1: the mean of recalibrated risks equals the observed rate
    a = calibration_intercept(y, p)
    assert np.mean(1 / (1 + np.exp(-(a + lp)))) == pytest.approx(y.mean(), abs=1e-8)
    assert a > 0  # risks were underestimated by a factor 1.3
    assert np.isnan(calibration_slope(np.zeros(10, int), np.full(10, 0.2)))  # one class: undefined


def test_excess_gap_is_paired_and_signed(data):
    y, p, even, group = data
    e = excess_gap(y, p, even, group, n_boot=200, seed=0)
    assert e["lo"] <= e["value"] <= e["hi"]
    assert e["value"] > 0 and e["lo"] > 0  # the uneven predictor widens the gap of the even one
    same = excess_gap(y, p, p, group, n_boot=50)
    assert same == {"value": 0.0, "lo": 0.0, "hi": 0.0}  # paired: identical predictors differ by exactly 0
    rep = fairness_report({"even": even, "uneven": p}, y, {"access": group}, oracle="even", n_boot=50)
    gaps = {g["name"]: g for g in rep.gaps}
    assert "excess_vs_oracle" not in gaps["even"]
    assert gaps["uneven"]["excess_vs_oracle"] == pytest.approx(e["value"])


def test_cache_reuses_only_what_has_the_same_inputs(data, tmp_path, monkeypatch):
    """A cached report equals a fresh one; an entry whose predictions, threshold or oracle changed is
    recomputed, the rest are read back; a damaged cache file is ignored, not trusted."""
    from icl_toolkit.evaluation import fairness

    y, p, even, group = data
    age = np.where(np.arange(len(y)) % 3 == 0, "80+", "<80")
    preds, groups = {"even": even, "uneven": p}, {"access": group, "age": age}
    kw = dict(oracle="even", thresholds={"uneven": 0.3}, n_boot=30, seed=1)
    fresh = fairness_report(preds, y, groups, **kw)
    cache: dict = {}
    first = fairness_report(preds, y, groups, cache=cache, **kw)
    assert (first.subgroups, first.gaps) == (fresh.subgroups, fresh.gaps) and len(cache) == 4
    path = tmp_path / "fairness_cache.json"
    save_cache(path, cache)

    computed = []
    real = fairness._predictor_grouping
    monkeypatch.setattr(fairness, "_predictor_grouping",
                        lambda name, *a, **k: computed.append((name, a[2])) or real(name, *a, **k))
    again = fairness_report(preds, y, groups, cache=load_cache(path), **kw)
    assert computed == [] and (again.subgroups, again.gaps) == (fresh.subgroups, fresh.gaps)
    # renamed, with one changed prediction and another threshold: only what changed is recomputed
    changed = p.copy()
    changed[0] = 1 - changed[0]
    later = fairness_report({"even": even, "uneven v2": changed}, y, groups, cache=load_cache(path),
                            **(kw | {"thresholds": {"uneven v2": 0.3}}))
    assert computed == [("uneven v2", "access"), ("uneven v2", "age")]
    assert [g["name"] for g in later.gaps] == ["even", "even", "uneven v2", "uneven v2"]
    computed.clear()
    fairness_report({"even": even, "renamed": p}, y, groups, cache=load_cache(path),
                    **(kw | {"thresholds": {"renamed": 0.3}}))
    assert computed == []                        # same predictions under a new name: reused, renamed
    fairness_report(preds, y, groups, cache=load_cache(path), **(kw | {"thresholds": {"uneven": 0.5}}))
    assert computed == [("uneven", "access"), ("uneven", "age")]
    computed.clear()
    fairness_report({"uneven": p, "other oracle": p[::-1].copy()}, y, groups, cache=load_cache(path),
                    **(kw | {"oracle": "other oracle"}))
    assert ("uneven", "access") in computed      # the excess gap is against another oracle now
    path.write_text("{not json")
    assert load_cache(path) == {} and load_cache(tmp_path / "missing.json") == {}
    path.write_text('{"version": 0, "entries": {"x": 1}}')
    assert load_cache(path) == {}                # a cache from another version of the computation


def test_report_errors_name_the_problem(data):
    y, p, _, group = data
    with pytest.raises(ConfigError, match="both classes"):
        fairness_report({"m": p}, np.zeros(len(y), int), {"g": group}, n_boot=0)
    with pytest.raises(ConfigError, match="3 predictions"):
        fairness_report({"m": p[:3]}, y, {"g": group}, n_boot=0)
    with pytest.raises(ConfigError, match="'nope' is not among"):
        fairness_report({"m": p}, y, {"g": group}, oracle="nope", n_boot=0)


def test_markdown_and_plot(data, tmp_path):
    y, p, even, group = data
    rep = fairness_report({"even": even, "uneven": p}, y, {"access": group}, oracle="even", reference="even",
                          n_boot=20)
    md = gaps_markdown(rep)
    assert "gap - oracle's gap" in md and md.count("\n") == 2 + 2
    assert subgroups_markdown(rep, "uneven").count("access = ") == 2
    plot_fairness(tmp_path / "f.png", rep)
    assert (tmp_path / "f.png").stat().st_size > 5000
    assert "(" in md.split("\n")[2]  # 20 resamples: intervals
    # with no resamples there is no interval: the numbers stand alone, not "(- to -)"
    plain = gaps_markdown(fairness_report({"even": even, "uneven": p}, y, {"access": group}, oracle="even",
                                          reference="even", n_boot=0))
    assert "(- to -)" not in plain and plain.count("\n") == 2 + 2


def test_age_bands_and_groupings():
    assert age_band(69.9) == "<70" and age_band(70) == "70-79" and age_band(85) == "80+"
    ps = generate_cohort(SynthConfig(n=30, seed=2, rationales=False, disparity=Disparity(share=0.5)))
    g = group_attributes(ps)
    assert set(g) == {"sex", "age_band", "access"} and set(g["access"]) == {"limited", "standard"}


def test_disparity_cohort_same_risk_less_recorded():
    plain = generate_cohort(SynthConfig(n=600, seed=4, rationales=False))
    ps = generate_cohort(SynthConfig(n=600, seed=4, rationales=False, disparity=parse_disparity("default")))
    limited = [p for p in ps if p.groups["access"] == "limited"]
    standard = [p for p in ps if p.groups["access"] == "standard"]
    assert 0.2 < len(limited) / len(ps) < 0.4
    # the group does not change who has what or the outcome: same true risk and labels as without a disparity
    assert [p.metadata["true_risk"] for p in ps] == [p.metadata["true_risk"] for p in plain]
    assert [p.label for p in ps] == [p.label for p in plain]
    # standard-access patients' records are unchanged; limited-access ones show much less
    by_id = {p.patient_id: p for p in plain}
    assert all(p.events == by_id[p.patient_id].events for p in standard)
    shown = np.mean([len(p.history()) for p in limited]) / np.mean([len(by_id[p.patient_id].history())
                                                                    for p in limited])
    assert shown < 0.6
    visits = [sum(e.kind == "visit" for e in p.history()) for p in limited]
    assert np.mean(visits) < 0.65 * np.mean([sum(e.kind == "visit" for e in by_id[p.patient_id].history())
                                             for p in limited])


@pytest.mark.parametrize("text, match", [("share=1.5", "share must be in"), ("visit_factor=0", "visit_factor"),
                                         ("bogus=1", "KEY=VALUE"), ("share=x", "must be a number"),
                                         ("attribute=a b", "attribute")])
def test_disparity_flag_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_disparity(text)


def test_icl_report_fairness_cli(invoke, tmp_path):
    import json

    from icl_toolkit.data.cohort import write_cohort

    ps = generate_cohort(SynthConfig(n=160, seed=6, rationales=False, disparity=Disparity(share=0.4)))
    write_cohort(ps, tmp_path / "c.jsonl")
    rng = np.random.default_rng(0)
    with open(tmp_path / "a.jsonl", "w") as fh:
        for p in ps:
            fh.write(json.dumps({"patient_id": p.patient_id, "probability": float(rng.random())}) + "\n")
        fh.write(json.dumps({"patient_id": ps[0].patient_id, "error": "failed"}) + "\n")
    with open(tmp_path / "b.jsonl", "w") as fh:
        for p in ps[:-5]:
            fh.write(json.dumps({"patient_id": p.patient_id, "probability": p.age_at_index / 100}) + "\n")
    code, text = invoke(["report", "fairness", "--predictions", f"rand={tmp_path / 'a.jsonl'}", "--predictions",
                         tmp_path / "b.jsonl", "--cohort", tmp_path / "c.jsonl", "--out", tmp_path / "fr",
                         "--resamples", "20", "--reference", "rand"])
    assert code == 0, text
    data = json.loads((tmp_path / "fr" / "fairness.json").read_text())
    assert data["patients"] == 155 and data["left_out"]["not_predicted"] == 5 and data["left_out"]["failed"] == 1
    names = {g["name"] for g in data["gaps"]}
    assert names == {"rand", "b", "oracle true risk"}  # the synthetic cohort's true risk is the oracle
    assert {g["group"] for g in data["gaps"]} == {"sex", "age_band", "access"}
    assert "gap - oracle's gap" in (tmp_path / "fr" / "fairness.md").read_text()
    assert (tmp_path / "fr" / "fairness.png").stat().st_size > 10_000
    # a prediction for a patient the cohort lacks: the file, line and id
    (tmp_path / "x.jsonl").write_text('{"patient_id": "nobody", "probability": 0.2}\n')
    code, text = invoke(["report", "fairness", "--predictions", tmp_path / "x.jsonl", "--cohort",
                         tmp_path / "c.jsonl", "--out", tmp_path / "fr2"])
    assert code == 1 and "x.jsonl:1: patient_id 'nobody' is not in" in text
    code, text = invoke(["report", "fairness", "--predictions", tmp_path / "a.jsonl", "--cohort",
                         tmp_path / "c.jsonl", "--reference", "zzz"])
    assert code == 1 and "--reference 'zzz'" in text
