from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import patient_to_dict
from icl_toolkit.data.describe import oracle_auroc
from icl_toolkit.data.synth import SynthConfig, generate_cohort, parse_split
from icl_toolkit.data.synth.risk import sample_population, true_risk


def _digest(patients) -> str:
    h = hashlib.sha256()
    for p in patients:
        h.update(json.dumps(patient_to_dict(p), sort_keys=True).encode())
    return h.hexdigest()


def test_same_seed_same_cohort_other_seed_other_cohort() -> None:
    a = generate_cohort(SynthConfig(n=200, seed=5))
    b = generate_cohort(SynthConfig(n=200, seed=5))
    c = generate_cohort(SynthConfig(n=200, seed=6))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_prevalence_and_oracle_auroc_in_range(cohort_5000) -> None:
    labels = [p.label for p in cohort_5000]
    prevalence = sum(labels) / len(labels)
    assert 0.10 <= prevalence <= 0.20
    auc = oracle_auroc(cohort_5000)
    assert auc is not None and 0.80 <= auc <= 0.88
    # the stored risk is calibrated: mean risk tracks the observed rate
    mean_risk = np.mean([p.metadata["true_risk"] for p in cohort_5000])
    assert abs(mean_risk - prevalence) < 0.02


def test_cohort_is_learnable_from_the_history_but_not_trivially(cohort_5000) -> None:
    """A bag-of-codes logistic regression beats age alone and stays below the oracle."""

    def feats(p):
        d = {f"{e.kind}:{e.code}": 1.0 for e in p.history() if e.kind != "visit"}
        d["age"] = (p.age_at_index - 75) / 10
        return d

    x = DictVectorizer().fit_transform([feats(p) for p in cohort_5000])
    y = np.array([p.label for p in cohort_5000])
    model = LogisticRegression(C=0.3, max_iter=3000).fit(x[:4000], y[:4000])
    auc = roc_auc_score(y[4000:], model.predict_proba(x[4000:])[:, 1])
    age_auc = roc_auc_score(y[4000:], [p.age_at_index for p in cohort_5000[4000:]])
    oracle = roc_auc_score(y[4000:], [p.metadata["true_risk"] for p in cohort_5000[4000:]])
    assert age_auc + 0.03 < auc < oracle


def test_records_have_the_promised_shape(cohort_5000) -> None:
    kinds = Counter()
    for p in cohort_5000:
        assert 60.0 <= p.age_at_index <= 90.1
        hist = p.history()
        assert len(hist) == len(p.events), "the generator writes only pre-index events"
        years = (p.index_date - min(e.date for e in hist)).days / 365.25
        assert 4.9 <= years <= 15.1
        assert (p.label == 1) == (p.outcome_date is not None)
        if p.outcome_date:
            assert 0 < (p.outcome_date - p.index_date).days <= 5 * 365.25 + 1
        kinds.update(e.kind for e in hist)
        assert 0.0 < p.metadata["true_risk"] < 1.0
    assert set(kinds) == {"diagnosis", "medication", "procedure", "lab", "vital", "visit", "observation"}
    labs = {e.name for p in cohort_5000[:500] for e in p.events if e.kind == "lab"}
    assert any("A1c" in n for n in labs) and any("LDL" in n for n in labs) and any("Glomerular" in n for n in labs)


def test_sparse_histories_and_noise_exist(cohort_5000) -> None:
    n_events = np.array([len(p.events) for p in cohort_5000])
    assert (n_events < 40).mean() > 0.05, "some histories are sparse"
    noise_codes = {"K21.9", "M17.9", "J30.9", "M54.50"}
    assert sum(any(e.code in noise_codes for e in p.events) for p in cohort_5000) > 1000


def test_risk_factors_are_correlated_and_raise_risk() -> None:
    pop = sample_population(40_000, np.random.default_rng(3))
    htn, dm = pop.present["hypertension"], pop.present["diabetes"]
    assert np.corrcoef(htn, dm)[0, 1] > 0.05
    risk = true_risk(pop)
    assert risk[pop.present["mci"]].mean() > 2 * risk[~pop.present["mci"]].mean()
    assert risk[pop.age > 80].mean() > 2 * risk[pop.age < 70].mean()


def test_splits_are_disjoint_stratified_and_sized() -> None:
    cohort = generate_cohort(SynthConfig(n=2000, seed=2, split=parse_split("train=0.7,val=0.1,test=0.2")))
    by = Counter(p.split for p in cohort)
    assert by == {"train": pytest.approx(1400, abs=3), "val": pytest.approx(200, abs=3),
                  "test": pytest.approx(400, abs=3)}
    ids = {s: {p.patient_id for p in cohort if p.split == s} for s in by}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"]) and not (ids["val"] & ids["test"])
    prev = {s: np.mean([p.label for p in cohort if p.split == s]) for s in by}
    assert max(prev.values()) - min(prev.values()) < 0.02


@pytest.mark.parametrize("text", ["train=0.7,val=0.2", "train=0.7,dev=0.3", "train:0.7", "train=x"])
def test_bad_split_specs_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_split(text)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'n' parameter must be an int >= 1. Got 0"):
        SynthConfig(n=0)
    with pytest.raises(ConfigError, match="prevalence"):
        SynthConfig(n=5, prevalence=0.9)


def test_prevalence_option_moves_the_rate() -> None:
    low = generate_cohort(SynthConfig(n=3000, seed=4, prevalence=0.1, rationales=False))
    high = generate_cohort(SynthConfig(n=3000, seed=4, prevalence=0.2, rationales=False))
    assert np.mean([p.label for p in low]) < np.mean([p.label for p in high])


def test_presence_is_byte_identical_to_earlier_releases(tmp_path) -> None:
    """The default signal writes exactly what every release before the trajectory signal wrote (digest of
    `icl data synth --n 300 --seed 3` taken before the change)."""
    import hashlib

    from icl_toolkit.data.cohort import write_cohort

    write_cohort(generate_cohort(SynthConfig(n=300, seed=3)), tmp_path / "c.jsonl")
    digest = hashlib.sha256((tmp_path / "c.jsonl").read_bytes()).hexdigest()
    assert digest == "3b7f52582e2c0619ee63cbbeab20805f58abd0132a60e63c932d676fdeffb70e"


def test_trajectory_is_deterministic_and_its_signal_is_in_the_values() -> None:
    import numpy as np

    a = generate_cohort(SynthConfig(n=400, seed=5, rationales=False, signal="trajectory"))
    b = generate_cohort(SynthConfig(n=400, seed=5, rationales=False, signal="trajectory"))
    assert a == b
    plain = generate_cohort(SynthConfig(n=400, seed=5, rationales=False))
    assert [p.sex for p in a] == [p.sex for p in plain]  # the same people, the dynamics drawn on their own stream
    assert all(p.metadata["signal"] == "trajectory" for p in a) and "signal" not in plain[0].metadata
    risk = np.array([p.metadata["true_risk"] for p in a])
    assert 0.1 < risk.mean() < 0.2  # the intercept keeps the prevalence
    # a faster cognitive decline shows as a steeper fall of the MoCA score across visits
    slopes, speeds = [], []
    for p in a:
        moca = [(e.date.toordinal() / 365.25, e.value) for e in p.history() if e.name.lower().startswith("moca")
                or "montreal" in e.name.lower()]
        if len(moca) >= 4:
            t, v = np.array(moca, dtype=float).T
            slopes.append(np.polyfit(t, v, 1)[0])
            speeds.append(p.metadata["true_dynamics"]["cognitive_decline_z"])
    assert len(slopes) > 200 and np.corrcoef(slopes, speeds)[0, 1] < -0.5
    # denser recent visits for a higher acceleration
    def recent_share(p):
        days = [(p.index_date - e.date).days for e in p.history() if e.kind == "visit"]
        return np.mean([d < 730 for d in days])
    acc = [p.metadata["true_dynamics"]["visit_acceleration_z"] for p in a]
    assert np.corrcoef(acc, [recent_share(p) for p in a])[0, 1] > 0.3
    with pytest.raises(ConfigError, match="--signal"):
        SynthConfig(n=3, signal="shape")
