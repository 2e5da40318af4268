"""Demonstrations chosen and read for the model: order ensembles, gain scores and selection, the pool model's risk
in the prompt, stop rules in reason mode, and these options through `icl compare`."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from icl_toolkit.backends import GenerationParams, choice_probabilities, no_ngram_repeats
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.evaluation.compare import Comparison, load_compare_config
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.inference.gain import GainConfig, compute_gain, gain_features
from icl_toolkit.inference.predictor import Predictor
from icl_toolkit.prompting.builder import RISK_LINE, PromptBuilder
from icl_toolkit.retrieval.gain import GainScores
from icl_toolkit.retrieval.representations import PrognosticBlock
from icl_toolkit.retrieval.retriever import Hit
from icl_toolkit.retrieval.risk import PoolRisk, risk_text

SMALL = {"query_tokens": 120, "demo_tokens": 100}


@pytest.fixture(scope="module")
def pool(small_cohort):
    return small_cohort[:120]


@pytest.fixture(scope="module")
def queries(small_cohort):
    return small_cohort[200:206]


def _predictor(backend, pool, **options):
    return Predictor(backend, PredictConfig.from_options(**SMALL, **options), progress=False).fit(pool)


# ---------------------------------------------------------------------------------------------- order ensembles


def test_one_order_is_the_plain_prediction(tiny_backend_obj, pool, queries):
    predictor = _predictor(tiny_backend_obj, pool, k=3)
    out = predictor.predict_proba(queries)
    prompts = predictor.build_prompts(queries, predictor.retrieve(queries))
    logprobs = tiny_backend_obj.score([p.text for p in prompts], [" Yes", " No"])
    for pred, lp in zip(out, logprobs):
        assert pred.probability == round(choice_probabilities(lp)[0], 6)
        assert "orders" not in pred.to_dict() and "order_sd" not in pred.to_dict()


def test_order_ensemble_is_the_mean_of_single_order_runs(tiny_backend_obj, pool, queries):
    m = 4
    plain = _predictor(tiny_backend_obj, pool, k=3).predict_proba(queries)
    predictor = _predictor(tiny_backend_obj, pool, k=3, orders=m)
    out = predictor.predict_proba(queries)
    retrievals = predictor.retrieve(queries)
    singles = []
    for perm in range(m):
        texts = [p.text for p in predictor.build_prompts(queries, retrievals, perm)]
        singles.append([choice_probabilities(lp)[0] for lp in tiny_backend_obj.score(texts, [" Yes", " No"])])
    orders_seen = {tuple(h.patient_id for h in p.demos) for p in predictor.build_prompts(queries[:1], retrievals[:1])}
    assert len(orders_seen) == 1
    for i, pred in enumerate(out):
        each = [singles[perm][i] for perm in range(m)]
        assert pred.probability == pytest.approx(float(np.mean(each)), abs=2e-6)
        assert pred.orders == pytest.approx(each, abs=2e-6)  # batches of other sizes: float noise only
        assert pred.order_sd == pytest.approx(float(np.std(each)), abs=2e-6)
        assert pred.orders[0] == pytest.approx(plain[i].probability, abs=2e-6)  # the identity order first
    # the permutations really reorder the demos (for some patient)
    perms = [
        [h.patient_id for h in predictor.build_prompts(queries, retrievals, perm)[i].demos]
        for i in range(len(queries))
        for perm in range(m)
    ]
    assert len({tuple(x) for x in perms}) > len(queries)


# ---------------------------------------------------------------------------------------------- risk in the prompt


def test_the_risk_shown_is_cross_fitted(tiny_backend_obj, pool, queries):
    predictor = _predictor(tiny_backend_obj, pool, k=2, show_risk=True)
    retrievals = predictor.retrieve(queries[:2])
    prompt = predictor.build_prompts(queries[:2], retrievals)[0]
    demo = pool[[p.patient_id for p in pool].index(prompt.demos[0].patient_id)]
    block = PrognosticBlock(folds=5).fit(pool)
    row = [p.patient_id for p in pool].index(demo.patient_id)
    crossfit = 1 / (1 + np.exp(-block.pool_logits_[row]))
    full = 1 / (1 + np.exp(-block.logits([demo])[0]))
    shown = PoolRisk().fit(pool).risk([demo])[0]
    assert shown == pytest.approx(crossfit) and abs(shown - full) > 1e-6
    assert prompt.text.count(RISK_LINE) == 3  # the query and both demos
    assert f"{RISK_LINE}: {risk_text(shown)}" in prompt.text
    # the query's risk comes from the model of the whole pool (it is not in the pool)
    query_risk = PoolRisk().fit(pool).risk(queries[:1])[0]
    assert query_risk == pytest.approx(1 / (1 + np.exp(-block.logits(queries[:1])[0])))
    # a pool patient's own label does not set the risk shown for it
    flipped = [dataclasses.replace(p, label=1 - p.label) if p is demo else p for p in pool]
    assert PoolRisk().fit(flipped).risk([demo])[0] == pytest.approx(shown)


# ---------------------------------------------------------------------------------------------- gain scores


@pytest.fixture(scope="module")
def gain_pool(small_cohort):
    return small_cohort[:60]


@pytest.fixture(scope="module")
def gains(tiny_backend_obj, gain_pool):
    from icl_toolkit.prompting.config import PromptConfig

    return compute_gain(tiny_backend_obj, gain_pool, PromptConfig(**SMALL), GainConfig(neighbours=2, folds=3),
                        progress=False)


def test_gain_scores_equal_a_brute_force_computation(tiny_backend_obj, gain_pool, gains):
    from icl_toolkit.prompting.config import PromptConfig

    config = PromptConfig(**SMALL)
    by_id = {p.patient_id: p for p in gain_pool}
    fold = PrognosticBlock(folds=3).folds_of(gain_pool)
    x = gain_features(gain_pool)
    one = PromptBuilder(tiny_backend_obj.tokenizer, config)
    zero = PromptBuilder(tiny_backend_obj.tokenizer, config.model_copy(update={"demos": "none"}))
    assert len(gains.measured) == len(gain_pool)
    for c in (0, 7, 31):
        cand = gain_pool[c]
        same = [r for r in range(len(gain_pool)) if fold[r] == fold[c] and gain_pool[r].subject_id != cand.subject_id]
        near = sorted(same, key=lambda r: (-float(x[r] @ x[c]), gain_pool[r].patient_id))[:2]
        deltas = []
        for q in near:
            patient = gain_pool[q]
            shown = one.build(patient, [Hit(cand.patient_id, 1.0, cand.label, c)], by_id).text
            alone = zero.build(patient, [], by_id).text
            lp_shown, lp_alone = tiny_backend_obj.score([shown, alone], [" Yes", " No"])
            p1, p0 = choice_probabilities(lp_shown)[0], choice_probabilities(lp_alone)[0]
            if patient.label == 0:
                p1, p0 = 1 - p1, 1 - p0
            deltas.append(np.log(p1) - np.log(p0))
        assert gains.measured[cand.patient_id] == pytest.approx(float(np.mean(deltas)), abs=2e-5)
    assert set(gains.scores) == set(by_id) and gains.model_id == tiny_backend_obj.model_id


def test_a_pool_patients_gain_score_does_not_depend_on_its_own_label(tiny_backend_obj, gain_pool, gains):
    from icl_toolkit.prompting.config import PromptConfig

    target = gain_pool[5]
    flipped = [dataclasses.replace(p, label=1 - p.label) if p is target else p for p in gain_pool]
    again = compute_gain(tiny_backend_obj, flipped, PromptConfig(**SMALL), GainConfig(neighbours=2, folds=3),
                         progress=False)
    assert again.scores[target.patient_id] == gains.scores[target.patient_id]
    # the flip is seen: the raw gain of the flipped demo (shown with the other outcome) changes
    assert again.measured[target.patient_id] != gains.measured[target.patient_id]


def test_gain_selection_re_ranks_the_most_similar(tiny_backend_obj, gain_pool, gains, queries):
    predictor = Predictor(
        tiny_backend_obj, PredictConfig.from_options(**SMALL, k=2, strategy="gain", gain_candidates=6),
        progress=False,
    ).fit(gain_pool, gain=gains)
    similar = Predictor(
        tiny_backend_obj, PredictConfig.from_options(**SMALL, k=6), progress=False
    ).fit(gain_pool)
    for got, top in zip(predictor.retrieve(queries), similar.retrieve(queries)):
        candidates = [h.patient_id for h in top.hits]
        want = sorted(candidates, key=lambda i: -gains.scores[i])[:2]
        assert sorted(h.patient_id for h in got.hits) == sorted(want)


def test_gain_scores_of_another_model_are_refused_by_name(tiny_backend_obj, gain_pool, gains, tmp_path):
    other = GainScores(gains.scores, gains.meta | {"model_id": "some-other-model"})
    other.save(tmp_path)
    config = PredictConfig.from_options(**SMALL, k=2, strategy="gain")
    with pytest.raises(ConfigError, match="some-other-model"):
        Predictor(tiny_backend_obj, config, progress=False).fit(gain_pool, gain=GainScores.load_for(tmp_path))
    with pytest.raises(ConfigError, match="icl index gain"):
        GainScores.load_for(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------- stop rules


def test_stop_rules_end_generation_where_the_template_says(tiny_backend_obj, pool, queries, tmp_path):
    rule = {"k": 0, "mode": "reason", "reason_tokens": 24, "no_repeat_ngram": 2}  # varied text from the random model
    text = _predictor(tiny_backend_obj, pool, **rule).predict_proba(queries[:1])[0].reasoning
    words = [w for w in text.split() if text.index(w) > 0]
    cut = words[len(words) // 2]  # a word from the middle of what the model writes freely
    assert cut.strip() and 0 < text.index(cut) < len(text.rstrip())
    by_option = _predictor(tiny_backend_obj, pool, **rule, stop=(cut,))
    assert by_option.predict_proba(queries[:1])[0].reasoning == text[: text.index(cut)]
    template = tmp_path / "reason_stop.j2"
    template.write_text("{% set stop = [" + json.dumps(cut) + "] %}\n{{ query.history }}\n{{ task }}\n")
    by_template = _predictor(tiny_backend_obj, pool, **rule, template=str(template))
    reasoning = by_template.predict_proba(queries[:1])[0].reasoning
    assert cut not in reasoning and by_template.builder_.stop_strings[1] == cut


def test_no_repeat_ngram_and_its_refusal_elsewhere(tiny_backend_obj, pool, queries):
    out = _predictor(tiny_backend_obj, pool, k=0, mode="reason", reason_tokens=40, no_repeat_ngram=2)
    ids = tiny_backend_obj.tokenizer(out.predict_proba(queries[:1])[0].reasoning, add_special_tokens=False)["input_ids"]
    pairs = list(zip(ids, ids[1:]))
    # decoding and re-encoding can merge tokens at the edges; the generated pairs are (almost) all distinct
    assert len(set(pairs)) >= len(pairs) - 1
    loose = _predictor(tiny_backend_obj, pool, k=0, mode="reason", reason_tokens=40).predict_proba(queries[:1])[0]
    ids = tiny_backend_obj.tokenizer(loose.reasoning, add_special_tokens=False)["input_ids"]
    assert len(set(zip(ids, ids[1:]))) < len(ids) - 2  # without the rule the random model repeats itself
    with pytest.raises(ConfigError, match="repetition-penalty"):
        no_ngram_repeats(GenerationParams(no_repeat_ngram_size=3), "vllm")


# ---------------------------------------------------------------------------------------------- icl compare

ARMS = """
reference = "base / none / score"
bootstrap = 100
fairness_bootstrap = 0
baselines = ["knn", "age"]

[checkpoints]
base = "{base}"

[prompt]
query_tokens = 120
demo_tokens = 100

[gain]
neighbours = 2
limit = 30
folds = 3

[[arm]]
checkpoint = "base"
demos = ["none", "rationale"]
k = 2

[[arm]]
checkpoint = "base"
demos = "rationale"
k = 2
orders = 2
show_risk = [false, true]

[[arm]]
checkpoint = "base"
demos = "rationale"
k = 2
strategy = "gain"
"""


def test_options_through_icl_compare_with_their_contrasts(small_cohort, tiny_model_dir, tmp_path):
    pool, rest = small_cohort[:80], small_cohort[200:]
    test = [p for p in rest if p.label == 1][:6] + [p for p in rest if p.label == 0][:10]
    others = [p for p in rest if p not in test]
    val = [p for p in others if p.label == 1][:3] + [p for p in others if p.label == 0][:7]
    (tmp_path / "arms.toml").write_text(ARMS.format(base=tiny_model_dir))
    config, _ = load_compare_config(tmp_path / "arms.toml")
    names = [a.name for a in config.arms()]
    assert "base / rationale k=2 similar / score orders=2 +risk" in names
    result = Comparison(config, tmp_path / "out", progress=False).run(test, pool, val)
    questions = {(c["a"], c["b"]): c["question"] for c in result.contrasts}
    assert ("base / rationale k=2 similar / score orders=2", "base / rationale k=2 similar / score") in questions
    assert ("base / rationale k=2 similar / score orders=2 +risk", "pool risk score (shown)") in questions
    assert ("base / rationale k=2 gain / score", "kNN vote gain k=2 (base)") in questions
    assert ("base / rationale k=2 gain / score", "base / rationale k=2 similar / score") in questions
    assert ("base / rationale k=2 gain / score", "base / none / score") in questions
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    plain, ensemble = rows["base / rationale k=2 similar / score"], rows["base / rationale k=2 similar / score orders=2"]
    assert float(ensemble["prompt_tokens"]) == pytest.approx(2 * float(plain["prompt_tokens"]), rel=0.05)
    gain_meta = json.loads((tmp_path / "out" / "gain" / "base" / "gain.json").read_text())["meta"]
    assert gain_meta["measured"] == 30

    # nothing is chosen on test patients: other test labels leave the gain scores (and the demos) as they were
    flipped = [dataclasses.replace(p, label=1 - p.label) for p in test]
    again = Comparison(config, tmp_path / "out2", progress=False).run(flipped, pool, val)
    assert json.loads((tmp_path / "out2" / "gain" / "base" / "gain.json").read_text())["scores"] == json.loads(
        (tmp_path / "out" / "gain" / "base" / "gain.json").read_text()
    )["scores"]
    assert again.contrasts


def test_looping_reasonings_and_the_stop_rule_choice():
    from icl_toolkit.evaluation.reasoning import choose_stop_rule, count_looping, count_unfinished, looping

    loops = "Step 1: Start: 80.\nStep 4: Weigh it up: modest.\nStep 5: Weigh it up: modest.\nStep 6: Weigh it"
    assert looping(loops) and not looping("Step 1: Start: 80.\nStep 2: Check risk: none.") and not looping(None)
    assert count_looping([{"reasoning": loops}, {"reasoning": "fine"}]) == 1
    rows = [
        {"name": "none", "n": 64, "unfinished": 50, "val_auroc": 0.70},
        {"name": "stop", "n": 64, "unfinished": 1, "val_auroc": 0.60},
        {"name": "ngram", "n": 64, "unfinished": 3, "val_auroc": 0.65},
        {"name": "penalty", "n": 64, "unfinished": 20, "val_auroc": 0.80},
    ]
    assert choose_stop_rule(rows)["name"] == "ngram"  # the best validation AUROC among rules that stop
    assert choose_stop_rule([r | {"unfinished": 40} for r in rows])["name"] == "penalty"

    class Words:  # a tokenizer of whitespace words
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    records = [{"reasoning": loops}, {"reasoning": "a " * 20}, {"reasoning": "short and done"}]
    assert count_unfinished(records, Words(), reason_tokens=22) == 2  # the loop, and the one at the limit


def test_gain_order_and_risk_through_the_cli(small_cohort, tiny_model_dir, invoke, tmp_path):
    from icl_toolkit.data.cohort import write_cohort

    write_cohort(small_cohort[:60], tmp_path / "pool.jsonl")
    write_cohort(small_cohort[200:203], tmp_path / "test.jsonl")
    code, text = invoke(["index", "build", "--pool", tmp_path / "pool.jsonl", "--out", tmp_path / "idx"])
    assert code == 0, text
    base = ["predict", "--cohort", tmp_path / "test.jsonl", "--pool", tmp_path / "pool.jsonl", "--index",
            tmp_path / "idx", "--model", tiny_model_dir, "--k", "2", "--query-tokens", "120", "--demo-tokens", "100"]
    code, text = invoke([*base, "--strategy", "gain", "--out", tmp_path / "a.jsonl"])
    assert code != 0 and "icl index gain" in text
    code, text = invoke(["index", "gain", "--pool", tmp_path / "pool.jsonl", "--index", tmp_path / "idx", "--model",
                         tiny_model_dir, "--limit", "12", "--neighbours", "2", "--query-tokens", "120"])
    assert code == 0 and "12 measured" in text, text
    code, text = invoke([*base, "--strategy", "gain", "--orders", "2", "--show-risk", "--out", tmp_path / "b.jsonl"])
    assert code == 0, text
    records = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["orders"]) == 2 for r in records)


def test_gain_orders_and_risk_in_the_service(tiny_backend_obj, gain_pool, gains, queries):
    pytest.importorskip("fastapi")
    from icl_toolkit.serve.schemas import PredictOptions
    from icl_toolkit.serve.service import PredictionService

    config = PredictConfig.from_options(**SMALL, k=2, orders=2, show_risk=True)
    service = PredictionService(tiny_backend_obj, gain_pool, None, config, gain=gains)
    got = service.predict_now(queries[:2], PredictOptions(k=2, strategy="gain", return_prompt=True))
    offline = Predictor(
        tiny_backend_obj, PredictConfig.from_options(**SMALL, k=2, orders=2, show_risk=True, strategy="gain"),
        progress=False,
    ).fit(gain_pool, gain=gains)
    want = offline.predict_proba(queries[:2])
    assert [[d["patient_id"] for d in g["demos"]] for g in got] == [[d["patient_id"] for d in w.demos] for w in want]
    assert [g["probability"] for g in got] == pytest.approx([w.probability for w in want], abs=2e-6)
    assert all(len(g["orders"]) == 2 and RISK_LINE in g["prompt"] for g in got)
    without = PredictionService(tiny_backend_obj, gain_pool, None, config)
    with pytest.raises(ConfigError, match="gain scores"):
        without.predict_now(queries[:1], PredictOptions(k=2, strategy="gain"))
