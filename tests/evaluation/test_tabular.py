"""The tabular baselines: windowed features against a brute-force count, seeded tuning, and no choice that
depends on test patients."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Event, Patient
from icl_toolkit.evaluation import tabular as tab
from icl_toolkit.evaluation.compare import CompareConfig, Comparison

INDEX = dt.date(2020, 1, 1)


def _patient(events: list[Event]) -> Patient:
    return Patient(patient_id="P1", sex="F", birth_date=dt.date(1950, 1, 1), index_date=INDEX, events=events, label=0)


def _ev(days_before: int, code: str, value: float | None = None, kind: str = "lab") -> Event:
    return Event(date=INDEX - dt.timedelta(days=days_before), kind=kind, code=code, system="LOINC", name=code,
                 value=value)


def test_windowed_features_match_a_brute_force_count_at_the_edges():
    events = [_ev(0, "A", 10.0), _ev(29, "A", 20.0), _ev(30, "A", 30.0), _ev(364, "B"), _ev(365, "B"),
              _ev(1000, "A", 5.0), _ev(-1, "A", 99.0), _ev(-400, "B"), _ev(10, "V", kind="visit"),
              _ev(100, "V", kind="visit")]
    p = _patient(events)
    f = tab.windowed_features(p, (30, 365, "all"))
    brute: dict[str, float] = {}
    for e in events:
        d = (INDEX - e.date).days
        if d < 0:
            continue  # after the index date: never read
        for w in (30, 365, "all"):
            if w == "all" or d < w:
                name = f"visits|{w}" if e.kind == "visit" else f"count|{w}|LOINC:{e.code}"
                brute[name] = brute.get(name, 0.0) + 1
    assert {k: v for k, v in f.items() if k.startswith(("count|", "visits|"))} == brute
    assert f["count|30|LOINC:A"] == 2  # on the index date and 29 days before; 30 days before is out
    assert f["count|365|LOINC:B"] == 1 and f["count|all|LOINC:B"] == 2
    assert f["mean|30|LOINC:A"] == 15.0 and f["min|all|LOINC:A"] == 5.0 and f["max|all|LOINC:A"] == 30.0
    assert f["last|LOINC:A"] == 10.0  # the most recent value on or before the index date, not the later 99
    assert 99.0 not in f.values() and abs(f["age"]) < 1e-3 and f["sex=F"] == 1.0


def test_windows_are_validated():
    assert tab.parse_windows([30, "all", 30]) == (30, "all")
    for bad in ([0], ["year"], [], [True]):
        with pytest.raises(ConfigError, match="window"):
            tab.parse_windows(bad)
    with pytest.raises(Exception, match="window"):
        CompareConfig.model_validate({"arm": [{}], "tabular": {"windows": [-5]}})


@pytest.fixture(scope="module")
def split(small_cohort):
    return small_cohort[:180], small_cohort[180:240], small_cohort[240:]


def test_tuning_is_seeded_and_reads_only_pool_and_validation(split):
    pool, val, test = split
    space = tab.FeatureSpace((30, 365, "all"))
    x, xv = space.fit_transform(pool), space.transform(val)
    assert space.stats["patients"] == 180 and space.stats["nonzero"] == x.nnz > 0
    a = tab.tune_gbt(x, pool, xv, val, trials=4, seed=3)
    b = tab.tune_gbt(x, pool, xv, val, trials=4, seed=3)
    assert a.params == b.params and [t["val_auroc"] for t in a.trials] == [t["val_auroc"] for t in b.trials]
    xt = space.transform(test)
    assert a.predict(xt) == b.predict(xt)
    assert len(a.trials) == 4
    best = max(a.trials, key=lambda t: t["val_auroc"])
    assert all(a.params[k] == best[k] for k in a.params)
    c = tab.tune_gbt(x, pool, xv, val, trials=4, seed=4)
    params = [{k: t[k] for k in tab.GBT_GRID} for t in a.trials]
    assert [{k: t[k] for k in tab.GBT_GRID} for t in c.trials] != params  # another seed, another draw
    assert len({tuple(sorted(d.items())) for d in params}) == 4  # no candidate drawn twice
    lr = tab.tune_logreg(x, pool, xv, val)
    assert [t["C"] for t in lr.trials] == list(tab.LOGREG_C) and lr.chosen_by.startswith("validation AUROC")
    # without a validation split with both classes: the stated defaults
    none = tab.tune_gbt(x, pool, None, None, trials=4)
    assert none.params == tab.GBT_DEFAULT and none.trials == [] and "stated default" in none.chosen_by
    one_class = [p for p in val if p.label == 0]
    assert tab.tune_logreg(x, pool, space.transform(one_class), one_class).params == {"C": tab.LOGREG_DEFAULT_C}


def test_no_choice_changes_when_test_labels_are_permuted(split, tmp_path):
    pool, val, test = split
    config = CompareConfig.model_validate({"arm": [{}], "baselines": ["logreg", "gbt"], "tabular": {"trials": 3}})
    labels = [p.label for p in test]
    shuffled = np.random.default_rng(0).permutation(labels).tolist()
    assert shuffled != labels
    chosen = []
    for ys in (labels, shuffled):
        cohort = [dataclasses.replace(p, label=y) for p, y in zip(test, ys)]
        comparison = Comparison(config, tmp_path / str(len(chosen)), progress=False)
        comparison._val_all = val
        entries = comparison._baselines(cohort, val[:20], pool, {}, {})
        chosen.append(({k: v["params"] for k, v in comparison.tabular.items()}, [e.test for e in entries]))
    assert chosen[0] == chosen[1]
    assert set(chosen[0][0]) == {"logreg codes+age+sex", "gbt windowed counts"}
    assert (tmp_path / "0" / "baselines" / "tuning.csv").read_text().count("\n") == 1 + 7 + 3


def test_icl_report_baselines(split, tmp_path, invoke):
    from icl_toolkit.data.cohort import write_cohort

    pool, val, test = split
    for name, cohort in (("pool", pool), ("val", val), ("test", test)):
        write_cohort(cohort, tmp_path / f"{name}.jsonl")
    args = ["report", "baselines", "--pool", tmp_path / "pool.jsonl", "--test", tmp_path / "test.jsonl", "--val",
            tmp_path / "val.jsonl", "--out", tmp_path / "b", "--trials", "3", "--resamples", "50"]
    code, text = invoke(args)
    assert code == 0, text
    md = (tmp_path / "b" / "baselines.md").read_text()
    assert "logreg codes+age+sex" in md and "gbt windowed counts" in md and "validation AUROC" in md
    lines = (tmp_path / "b" / "gbt_windowed_counts.jsonl").read_text().splitlines()
    assert len(lines) == len(test)
    assert (tmp_path / "b" / "tuning.csv").read_text().count("\n") == 1 + 7 + 3
    # the same numbers as icl compare's baselines on the same patients
    b = tab.fit_tabular("gbt", pool, val, tab.TabularConfig(trials=3))
    import json

    assert [json.loads(x)["probability"] for x in lines] == pytest.approx(b.predict(test))
    code, text = invoke([*args[:-4], "--kind", "forest"])
    assert code != 0 and "not a tabular baseline" in text
