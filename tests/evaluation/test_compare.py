"""The comparison: arms config, a tiny compare end to end (shared retrieval, baselines, statistics,
outputs), resume after an interruption, and `icl compare`."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import write_cohort
from icl_toolkit.evaluation.compare import CompareConfig, Comparison, load_compare_config
from icl_toolkit.evaluation.metrics import delong_test
from icl_toolkit.training.config import FinetuneConfig
from icl_toolkit.training.sft import Finetuner

ARMS = """
reference = "base / none / score"
contrasts = [["sft / none / reason", "base / rationale k=2 similar / score"]]
bootstrap = 200
fairness_bootstrap = 20
val_limit = 12
baselines = ["logreg", "knn", "age", "oracle"]

[checkpoints]
base = "{base}"
sft = "{sft}"

[prompt]
query_tokens = 120
demo_tokens = 100
reason_tokens = 8

[[arm]]
checkpoint = "base"
demos = ["none", "label", "rationale"]
k = 2

[[arm]]
checkpoint = "sft"
demos = "none"
k = [2, 3]
mode = ["score", "reason"]
"""


@pytest.fixture(scope="module")
def data(small_cohort):
    rest = small_cohort[200:]
    cases = [p for p in rest if p.label == 1][:8]
    controls = [p for p in rest if p.label == 0][:12]
    test = [p for p in rest if p in cases or p in controls]
    others = [p for p in rest if p not in test]
    val = [p for p in others if p.label == 1][:4] + [p for p in others if p.label == 0][:8]
    # a group attribute for the fairness report (copies: the session's cohort is shared)
    test = [dataclasses.replace(p, groups={"site": "A" if i % 2 else "B"}) for i, p in enumerate(test)]
    return small_cohort[:200], test, val


@pytest.fixture(scope="module")
def setup(data, tiny_model_dir, tmp_path_factory):
    pool, test, val = data
    folder = tmp_path_factory.mktemp("compare")
    Finetuner(FinetuneConfig(target="rationale", max_steps=2, batch_size=4, query_tokens=120), base=str(tiny_model_dir),
              progress=False).fit(pool[:8], folder / "sft")
    (folder / "arms.toml").write_text(ARMS.format(base=tiny_model_dir, sft="sft"))
    for name, cohort in (("pool", pool), ("test", test), ("val", val)):
        write_cohort(cohort, folder / f"{name}.jsonl")
    return folder


@pytest.fixture(scope="module")
def run(setup, data, hash_embedder):
    pool, test, val = data
    config, _ = load_compare_config(setup / "arms.toml")
    result = Comparison(config, setup / "out", embedder=hash_embedder, progress=False).run(test, pool, val)
    return config, result


def test_arms_expand_and_collapse(setup):
    config, _ = load_compare_config(setup / "arms.toml")
    names = [a.name for a in config.arms()]
    # demos "none" has no k: sft's k list collapses, its modes do not
    assert names == ["base / none / score", "base / label k=2 similar / score", "base / rationale k=2 similar / score",
                     "sft / none / score", "sft / none / reason"]
    assert config.checkpoints["sft"] == str(setup / "sft")  # relative to the config file


@pytest.mark.parametrize("text, message", [
    ('[[arm]]\ncheckpoint = "base"\nk = 0\n', r"\[\[arm\]\] #1.k: .*between 1 and 1024"),
    ('[[arm]]\ncheckpoint = "nope"\n', "checkpoint 'nope' is not in \\[checkpoints\\]"),
    ('reference = "x"\n[[arm]]\n', "reference = 'x' is not an arm"),
    ('[[arm]]\nmode = "fast"\n', r"\[\[arm\]\] #1.mode"),
    ('[[arm]]\ndemos = ["label", "none"]\nname = "a"\n', "expands to 2 arms"),
    ('[retrieval]\nk = 3\n[[arm]]\n', "per \\[\\[arm\\]\\]"),
    ('[[arm]\n', "not valid TOML"),
    ('[engine]\ndtype = "fp8"\n[[arm]]\n', r"\[engine\].dtype: .*'auto', 'float32'"),
    ('backend = "vllm"\n[engine]\nbackend = "hf"\n[[arm]]\n', "backend is set both at the top level and in \\[engine\\]"),
])
def test_bad_configs_name_the_field(tmp_path, text, message):
    path = tmp_path / "arms.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_compare_config(path)


def test_tiny_compare_end_to_end(run, data):
    config, result = run
    pool, test, val = data
    out = result.out
    rows = {r["name"]: r for r in result.rows}
    arms = [a.name for a in config.arms()]
    assert list(rows)[:len(arms)] == arms
    assert {"logreg codes+age+sex", "age only", "kNN vote similar k=2", "oracle true risk"} <= set(rows)
    y = np.array([p.label for p in test])
    ids = [p.patient_id for p in test]
    preds = {}
    for arm in config.arms():
        records = [json.loads(x) for x in (out / "arms" / f"{arm.slug}.jsonl").read_text().splitlines()]
        assert sorted(r["patient_id"] for r in records) == sorted(ids)  # the same test patients everywhere
        by_id = {r["patient_id"]: r for r in records}
        preds[arm.name] = by_id
        assert len((out / "arms" / f"{arm.slug}.val.jsonl").read_text().splitlines()) == 12
    # the two demo arms read the same cached retrieval: the same neighbours for every patient
    lab, rat = preds["base / label k=2 similar / score"], preds["base / rationale k=2 similar / score"]
    for pid in ids:
        assert [d["patient_id"] for d in lab[pid]["demos"]] == [d["patient_id"] for d in rat[pid]["demos"]]
        assert len(lab[pid]["demos"]) == 2
    # the kNN baseline votes over exactly those neighbours
    knn = [np.mean([d["label"] for d in lab[pid]["demos"]]) for pid in ids]
    assert rows["kNN vote similar k=2"]["auroc"] == pytest.approx(_auroc(y, knn))
    # the oracle is the generator's risk
    assert rows["oracle true risk"]["auroc"] == pytest.approx(_auroc(y, [p.metadata["true_risk"] for p in test]))
    # statistics: reference has no test; others agree with a direct DeLong call
    ref = preds["base / none / score"]
    assert rows["base / none / score"]["p_value"] is None
    other = "sft / none / reason"
    d = delong_test(y, [preds[other][pid]["probability"] for pid in ids], [ref[pid]["probability"] for pid in ids])
    assert rows[other]["p_value"] == pytest.approx(d.p_value) and rows[other]["delta_auroc"] == pytest.approx(d.difference)
    for r in result.rows:
        assert r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"] and r["threshold_from"] == "validation"
    # the reason arm of the rationale checkpoint used the template it was trained on and wrote reasoning
    first = preds["sft / none / reason"][ids[0]]
    assert first["template"] == "zero_shot" and first["reasoning"] is not None
    # outputs
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(result.rows)
    with open(out / "subgroups.csv") as fh:
        groups = {(r["name"], r["group"]) for r in csv.DictReader(fh)}
    assert ("sft / none / score", "sex") in groups and ("age only", "age_band") in groups
    # the named contrast: the paired test of its two arms, not against the reference
    a, b = "sft / none / reason", "base / rationale k=2 similar / score"
    d2 = delong_test(y, [preds[a][pid]["probability"] for pid in ids], [preds[b][pid]["probability"] for pid in ids])
    ct, *standard = result.contrasts
    assert (ct["a"], ct["b"], ct["question"]) == (a, b, "named in the config")
    assert ct["p_value"] == pytest.approx(d2.p_value)
    assert ct["difference"] == pytest.approx(d2.difference) and ct["lo"] == pytest.approx(d2.ci_low)
    # the standard contrasts: each demo arm against the vote of its own demos (a direct DeLong call on the
    # neighbours' outcomes), and the best LM arm against the strongest tabular baseline, chosen on validation
    votes = [c for c in standard if c["b"] == "kNN vote similar k=2"]
    assert [c["a"] for c in votes] == ["base / label k=2 similar / score", "base / rationale k=2 similar / score"]
    d3 = delong_test(y, [lab[pid]["probability"] for pid in ids], knn)
    assert votes[0]["difference"] == pytest.approx(d3.difference) and votes[0]["p_value"] == pytest.approx(d3.p_value)
    (best,) = [c for c in standard if c not in votes]
    assert best["b"] == "logreg codes+age+sex" and "chosen by validation AUROC" in best["question"]
    from sklearn.metrics import roc_auc_score

    yv = [p.label for p in val]
    val_auc = {arm.name: roc_auc_score(yv, [json.loads(x)["probability"] for x in
                                             (out / "arms" / f"{arm.slug}.val.jsonl").read_text().splitlines()])
               for arm in config.arms()}
    assert best["a"] == max(val_auc, key=val_auc.get)
    assert len(list(csv.DictReader(open(out / "contrasts.csv")))) == 1 + len(standard) == 4
    # its power: the difference detectable at 80% (2.80 standard errors) and the test size that detects 0.05
    assert ct["se"] == pytest.approx(d2.se) and ct["detectable_80"] == pytest.approx(2.8016 * d2.se, rel=1e-4)
    md = (out / "results.md").read_text()
    assert md.count("\n") == len(result.rows) + 2 + 1 + 3 + 3 + 2 and "DeLong p" in md and f"{a} vs {b}" in md
    assert "detectable at 80% power" in md
    from icl_toolkit.evaluation.compare.report import _needed

    assert _needed(ct | {"patients_for_0_05": 76.0, "n": 400}) == "reached (76 would do)"
    assert _needed(ct | {"patients_for_0_05": 5710.0, "n": 400}) == "5,710"
    assert "## Contrasts (paired DeLong)" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    for name in rows:
        assert f"### {name}" in report
    assert "Intended use" in report and "Limitations" in report and "rationale SFT of" in report
    # a card notes an entry whose predictions hardly spread (the tiny random model's), and only such a one
    cards = {c.split("\n", 1)[0]: c for c in report.split("### ")[1:]}
    for name, r in rows.items():
        spread = np.subtract(*np.quantile([preds[name][pid]["probability"] for pid in ids], [0.95, 0.05])) \
            if name in preds else r["p95"] - r["p05"]
        assert ("barely separates" in cards[name]) == (spread < 0.05), name
    assert "barely separates" not in cards["age only"] and any("barely separates" in c for c in cards.values())
    for plot in ("roc.png", "auroc_vs_k.png", "calibration.png", "fairness.png"):
        assert (out / plot).stat().st_size > 10_000
    # fairness: every entry by sex, age band and the cohort's group attribute, gaps against oracle and reference
    with open(out / "subgroups.csv") as fh:
        sub = list(csv.DictReader(fh))
    assert {(r["name"], r["group"]) for r in sub} == {(n, g) for n in rows for g in ("sex", "age_band", "site")}
    assert all(float(r["auroc_lo"]) <= float(r["auroc_hi"]) for r in sub if r["auroc_lo"] not in ("", "nan"))
    gaps = {(g["name"], g["group"]): g for g in result.fairness_gaps}
    assert len(gaps) == 3 * len(rows)
    assert "excess_vs_oracle" not in gaps[("oracle true risk", "site")]
    g = gaps[("sft / none / reason", "site")]
    assert g["excess_vs_oracle_lo"] <= g["excess_vs_oracle"] <= g["excess_vs_oracle_hi"]
    assert "excess_vs_reference" in g and "excess_vs_reference" not in gaps[("base / none / score", "site")]
    assert "## Fairness" in report and "gap - oracle's gap" in report
    # recalibration of every entry on its validation predictions: Platt keeps the ranking exactly
    recal = list(csv.DictReader(open(out / "recalibration.csv")))
    assert [r["method"] for r in recal] == ["raw", "platt", "isotonic"] * len(rows)
    for name in rows:
        raw, platt, iso = [r for r in recal if r["name"] == name]
        assert float(platt["auroc"]) == pytest.approx(float(raw["auroc"])) == pytest.approx(rows[name]["auroc"])
        assert float(raw["brier"]) == pytest.approx(rows[name]["brier"])
    assert "## Recalibration" in report and "## Tuned baselines" in report and "C=" in report


def _auroc(y, p):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, p)


def test_power_of_a_contrast():
    from icl_toolkit.evaluation.compare.stats import power

    p = power(0.02, 400)
    assert p["detectable_80"] == pytest.approx(0.05603, abs=1e-5)
    assert p["patients_for_0_05"] == 503                       # ceil(400 * (0.05603 / 0.05) ** 2)
    # at that size the standard error has shrunk so that 0.05 is just detectable
    shrunk = 0.02 * (400 / p["patients_for_0_05"]) ** 0.5
    assert power(shrunk, int(p["patients_for_0_05"]))["detectable_80"] == pytest.approx(0.05, abs=2e-4)
    assert power(0.0, 400)["patients_for_0_05"] == 0


def test_rerun_skips_finished_arms_and_resumes_a_torn_one(run, data, setup, hash_embedder, monkeypatch):
    config, first = run
    pool, test, val = data
    out = first.out
    arm = config.arms()[2]
    path = out / "arms" / f"{arm.slug}.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:7]) + lines[7][:25])  # killed mid-write
    loads = []
    from icl_toolkit.evaluation.compare import run as run_mod

    real = run_mod.Comparison._default_backend
    monkeypatch.setattr(run_mod.Comparison, "_default_backend", lambda self, n, m: loads.append(n) or real(self, n, m))
    from icl_toolkit.evaluation import fairness

    cache_file = out / "fairness_cache.json"
    stale = json.loads(cache_file.read_text())
    stale["entries"]["stale-digest"] = {"subgroups": [], "gap": {}}      # predictions no longer in the design
    cache_file.write_text(json.dumps(stale))
    bootstrapped = []
    real_fair = fairness._predictor_grouping
    monkeypatch.setattr(fairness, "_predictor_grouping",
                        lambda name, *a, **k: bootstrapped.append(name) or real_fair(name, *a, **k))
    again = Comparison(config, out, embedder=hash_embedder, progress=False).run(test, pool, val)
    assert again.ran == [arm.name] and loads == ["base"]
    # the subgroup bootstrap of entries whose predictions are unchanged is read from fairness_cache.json
    assert (out / "fairness_cache.json").exists() and set(bootstrapped) <= {arm.name}
    assert again.fairness_gaps == first.fairness_gaps or set(bootstrapped) == {arm.name}
    # a full run keeps the cache entries it used and drops the rest
    kept = json.loads(cache_file.read_text())["entries"]
    assert "stale-digest" not in kept and 0 < len(kept) <= len(again.fairness_gaps)
    assert len(again.skipped) == len(config.arms()) - 1
    assert [json.loads(x)["patient_id"] for x in path.read_text().splitlines()].count(test[0].patient_id) == 1
    before = {r["name"]: r["auroc"] for r in first.rows}
    after = {r["name"]: r["auroc"] for r in again.rows}
    assert after == pytest.approx(before, abs=1e-6)


def test_changed_settings_are_refused_on_resume(run, data, hash_embedder):
    config, first = run
    pool, test, val = data
    changed = CompareConfig.model_validate(config.model_dump() | {"prompt": {"query_tokens": 130, "demo_tokens": 100,
                                                                             "reason_tokens": 8}})
    # force one arm to be pending so its settings are checked
    arm = changed.arms()[0]
    path = first.out / "arms" / f"{arm.slug}.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(ConfigError, match="query_tokens"):
        Comparison(changed, first.out, embedder=hash_embedder, progress=False).run(test, pool, val)


def test_finished_arms_are_checked_before_reuse(run, data, hash_embedder, tmp_path, monkeypatch):
    """A finished arm is never reported under settings or inputs it was not made with: refused before any
    index or model is built, naming the field; its model is not loaded to check it."""
    import shutil

    from icl_toolkit.evaluation.compare import run as run_mod

    config, first = run
    pool, test, val = data
    out = tmp_path / "out"
    shutil.copytree(first.out, out)
    monkeypatch.setattr(run_mod.Comparison, "_index", lambda *a: pytest.fail("built an index"))
    monkeypatch.setattr(run_mod.Comparison, "_default_backend", lambda *a: pytest.fail("loaded a model"))

    def compare(cfg=config, **inputs):
        kw = {"test": test, "pool": pool, "val": val} | inputs
        return Comparison(cfg, out, embedder=hash_embedder, progress=False).run(**kw)

    changed = CompareConfig.model_validate(config.model_dump() | {"prompt": {"query_tokens": 130, "demo_tokens": 100,
                                                                             "reason_tokens": 8}})
    with pytest.raises(ConfigError, match=r"config\.prompt\.query_tokens: made with 120, now 130\).*delete"):
        compare(changed)
    with pytest.raises(ConfigError, match=r"pool_hash: made with"):
        compare(pool=pool[:-1])
    with pytest.raises(ConfigError, match=r"cohort_hash: made with"):
        compare(test=test[:-1])
    wider = CompareConfig.model_validate(config.model_dump() | {"retrieval": {"mmr_lambda": 0.5}})
    with pytest.raises(ConfigError, match=r"base / label k=2 similar / score.*config\.retrieval\.mmr_lambda"):
        compare(wider)                        # retrieval settings matter to demo arms only
    arm = config.arms()[1]
    sidecar = out / "arms" / f"{arm.slug}.jsonl.meta.json"
    sidecar.unlink()
    with pytest.raises(ConfigError, match=r"settings sidecar .*\.meta\.json is missing"):
        compare()


def test_overlapping_pool_is_refused(data, setup, hash_embedder, tmp_path):
    pool, test, val = data
    config, _ = load_compare_config(setup / "arms.toml")
    with pytest.raises(ConfigError, match="also in the pool"):
        Comparison(config, tmp_path, embedder=hash_embedder, progress=False).run(test, pool + test[:1], val)


def test_engine_table_and_top_level_shorthand(tmp_path):
    path = tmp_path / "arms.toml"
    path.write_text('backend = "vllm"\nbatch_size = 4\n[engine]\ndtype = "bfloat16"\ntensor_parallel_size = 2\n[[arm]]\n')
    config, _ = load_compare_config(path)
    e = config.engine
    assert (e.backend, e.batch_size, e.dtype, e.tensor_parallel_size) == ("vllm", 4, "bfloat16", 2)
    path.write_text('[engine]\nbackend = "hf"\ngpu_memory_utilization = 0.5\n[[arm]]\n')
    config, _ = load_compare_config(path)
    from icl_toolkit.backends.options import backend_kwargs

    with pytest.raises(ConfigError, match="gpu-memory-utilization is for vllm"):
        backend_kwargs("hf", config.engine)


def test_icl_compare_cli(setup, tiny_model_dir, invoke, tmp_path):
    (tmp_path / "arms.toml").write_text(
        f'bootstrap = 100\nfairness_bootstrap = 10\nbaselines = ["age"]\n[checkpoints]\nbase = "{tiny_model_dir}"\n'
        '[prompt]\nquery_tokens = 120\n[[arm]]\ncheckpoint = "base"\n')
    args = ["compare", "--config", tmp_path / "arms.toml", "--test", setup / "test.jsonl", "--pool",
            setup / "pool.jsonl", "--out", tmp_path / "res", "--limit", "20", "--no-progress"]
    code, text = invoke(args)
    assert code == 0, text
    assert "base / none / score" in text and "age only" in text and "F1 at 0.5" not in text
    assert "1 arms predicted" in text
    code, text = invoke(args)
    assert code == 0 and "0 arms predicted, 1 already complete" in text
    rows = list(csv.DictReader(open(tmp_path / "res" / "results.csv")))
    assert rows[0]["threshold_from"] == "fixed 0.5: no validation split given" and rows[0]["n"] == "20"


def test_only_runs_a_stage_and_keeps_the_reference(data, setup, hash_embedder, tmp_path):
    pool, test, val = data
    config, _ = load_compare_config(setup / "arms.toml")
    staged = Comparison(config, tmp_path / "staged", embedder=hash_embedder, progress=False)
    first = staged.run(test, pool, val, only=["base"])  # the base model's arms, before the SFT checkpoint exists
    assert first.ran == ["base / none / score", "base / label k=2 similar / score",
                         "base / rationale k=2 similar / score"]
    assert [r["name"] for r in first.rows if r["kind"] == "arm"] == first.ran
    cached = set(json.loads((tmp_path / "staged" / "fairness_cache.json").read_text())["entries"])
    second = staged.run(test, pool, val, only=["base / none*", "sft"])  # globs on arm names, checkpoint names
    assert second.skipped == ["base / none / score"] and all(n.startswith("sft") for n in second.ran)
    # an --only run keeps the cache entries of arms it left out (the demo arms of the first stage)
    assert cached < set(json.loads((tmp_path / "staged" / "fairness_cache.json").read_text())["entries"])
    with pytest.raises(ConfigError, match="matches no arm"):
        staged.run(test, pool, val, only=["label_sft"])
    with pytest.raises(ConfigError, match="leaves out the reference arm"):
        staged.run(test, pool, val, only=["sft"])


def test_auroc_vs_k_has_whole_number_ticks_and_baselines_in_the_legend(tmp_path, monkeypatch):
    """The plot had fractional k ticks and baseline names printed over each other at the right edge."""
    from icl_toolkit.evaluation.compare import report

    seen = {}
    monkeypatch.setattr(report, "_save", lambda fig, ax, *a: seen.update(ax=ax, fig=fig))
    arm = {"kind": "arm", "checkpoint": "base", "mode": "score", "strategy": "similar", "auroc_lo": 0.5,
           "auroc_hi": 0.7, "auroc": 0.6}
    rows = [{**arm, "demos": "none", "k": 0}, {**arm, "demos": "label", "k": 2}, {**arm, "demos": "label", "k": 8},
            {"kind": "baseline", "name": "age only", "auroc": 0.70}, {"kind": "baseline", "name": "knn", "auroc": 0.71}]
    assert report.plot_auroc_vs_k(tmp_path / "p.png", rows)
    ax = seen["ax"]
    assert list(ax.get_xticks()) == [0, 2, 8]
    labels = ax.get_legend_handles_labels()[1]
    assert "age only 0.70" in labels and "knn 0.71" in labels and not ax.texts
    report._plt().close(seen["fig"])


def test_validation_patients_are_drawn_with_both_classes_and_a_missing_threshold_says_why(
        setup, tiny_model_dir, invoke, tmp_path):
    """val_limit used to take the first lines: with no case among them the card blamed a missing validation split."""
    from icl_toolkit.data.cohort import read_cohort, write_cohort
    from icl_toolkit.evaluation.compare.run import draw_validation

    patients = read_cohort(setup / "test.jsonl")
    controls = [p for p in patients if p.label == 0]
    cases = [p for p in patients if p.label == 1]
    val = controls[:12] + cases[:3]                     # the cases come last: the first 10 lines hold none
    drawn = draw_validation(val, 10)
    assert len(drawn) == 10 and sum(p.label for p in drawn) == 2          # 10 x 3/15 cases, in file order
    assert [p.patient_id for p in drawn] == [p.patient_id for p in val if p in drawn]
    assert sum(p.label for p in draw_validation(val, 10, "first")) == 0 and draw_validation(val, 50) == val
    write_cohort(controls[:12], tmp_path / "val.jsonl")                   # a validation file of one class
    (tmp_path / "arms.toml").write_text(
        f'bootstrap = 50\nfairness_bootstrap = 0\nbaselines = ["age"]\n[checkpoints]\nbase = "{tiny_model_dir}"\n'
        '[prompt]\nquery_tokens = 120\n[[arm]]\ncheckpoint = "base"\n')
    code, text = invoke(["compare", "--config", tmp_path / "arms.toml", "--test", setup / "test.jsonl", "--pool",
                         setup / "pool.jsonl", "--val", tmp_path / "val.jsonl", "--out", tmp_path / "res", "--limit",
                         "20", "--no-progress"])
    said = " ".join(text.split())
    assert code == 0 and "warning: F1 at a fixed 0.5: the 12 validation patients hold no case" in said, text
    card = (tmp_path / "res" / "report.md").read_text()
    assert "the 12 validation patients hold no case" in card and "no validation split given" not in card
