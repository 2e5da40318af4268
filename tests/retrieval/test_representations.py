"""Retrievers (issue 16): each against an independent reference, no leakage, cross-fitting, metadata checks, the
retrieval report end to end."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.retrieval.config import RETRIEVERS, RetrievalConfig
from icl_toolkit.retrieval.index import DemoIndex
from icl_toolkit.retrieval.representations import clinical_tokens, make_representation, prognostic_features
from icl_toolkit.retrieval.retriever import Retriever


@pytest.fixture(scope="module")
def data(small_cohort):
    return small_cohort[:200], small_cohort[200:240]


def _fit(kind, pool, emb, **kw):
    return Retriever(RetrievalConfig(retriever=kind, k=kw.pop("k", 6), **kw), emb).fit(pool, progress=False)


@pytest.mark.parametrize("kind", RETRIEVERS)
def test_every_retriever_returns_the_brute_force_top_k_of_its_similarity(kind, data, hash_embedder):
    pool, queries = data
    r = _fit(kind, pool, hash_embedder)
    rep = r.representation_
    pool_vecs = rep.pool_vectors()
    assert np.allclose(np.linalg.norm(pool_vecs, axis=1), 1.0, atol=1e-4)  # unit rows: inner product = similarity
    for q, got in zip(queries, r.retrieve(queries, progress=False)):
        sims = pool_vecs @ rep.transform([q])[0]
        order = [i for i in np.argsort(-sims, kind="stable") if pool[i].patient_id != q.patient_id][:6]
        assert np.allclose([h.score for h in got.hits], sims[order], atol=1e-5)
        assert {h.patient_id for h in got.hits} == {pool[i].patient_id for i in order} or \
            np.isclose(sims[order][-1], [h.score for h in got.hits][-1], atol=1e-5)  # ties at the k-th place


def test_sparse_similarity_is_tfidf_cosine(data):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.metrics.pairwise import cosine_similarity

    pool, queries = data
    rep = make_representation(RetrievalConfig(retriever="sparse")).fit(pool)
    vec = DictVectorizer().fit([clinical_tokens(p) for p in pool])
    tfidf = TfidfTransformer(sublinear_tf=True).fit(vec.transform([clinical_tokens(p) for p in pool]))
    ref = cosine_similarity(tfidf.transform(vec.transform([clinical_tokens(p) for p in queries])),
                            tfidf.transform(vec.transform([clinical_tokens(p) for p in pool])))
    np.testing.assert_allclose(rep.transform(queries) @ rep.pool_vectors().T, ref, atol=1e-5)


def test_hybrid_is_the_weighted_sum_of_its_parts(data, hash_embedder):
    from icl_toolkit.retrieval.representations import StructuredBlock

    pool, queries = data
    rep = make_representation(RetrievalConfig(retriever="hybrid", hybrid_weights=(0.5, 0.3, 0.2)), hash_embedder)
    rep.fit(pool)
    dense = hash_embedder.embed(queries, progress=False) @ hash_embedder.embed(pool, progress=False).T
    sparse = make_representation(RetrievalConfig(retriever="sparse")).fit(pool)
    sp = sparse.transform(queries) @ sparse.pool_vectors().T
    st = StructuredBlock().transform(queries) @ StructuredBlock().transform(pool).T
    np.testing.assert_allclose(rep.transform(queries) @ rep.pool_vectors().T, 0.5 * dense + 0.3 * sp + 0.2 * st,
                               atol=1e-5)


def test_structured_kernels_follow_age_sex_and_history(small_cohort):
    from icl_toolkit.retrieval.representations import StructuredBlock

    base = small_cohort[0]
    older = dataclasses.replace(base, birth_date=base.birth_date - dt.timedelta(days=round(10 * 365.25)))
    other_sex = dataclasses.replace(base, sex="M" if base.sex == "F" else "F")
    v = StructuredBlock().transform([base, older, other_sex])
    assert v[0] @ v[0] == pytest.approx(1.0, abs=1e-5)
    assert v[0] @ v[1] < v[0] @ v[2] < 1.0  # ten years apart matters more than sex (weights 0.5 vs 0.25)
    assert v[0] @ v[2] == pytest.approx(0.75, abs=1e-4)  # same age and history, other sex


def test_prognostic_query_scores_are_a_logistic_regression_on_the_pool(data):
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    pool, queries = data
    rep = make_representation(RetrievalConfig(retriever="prognostic")).fit(pool)
    block = rep.blocks[0]
    vec = DictVectorizer()
    x = vec.fit_transform([prognostic_features(p) for p in pool])
    lr = LogisticRegression(C=0.1, max_iter=5000).fit(x, [p.label for p in pool])
    ref = lr.decision_function(vec.transform([prognostic_features(p) for p in queries]))
    np.testing.assert_allclose(block.scores(queries), (ref - block._mu) / block._sd, atol=1e-6)


def test_cross_fitting_a_pool_patients_score_does_not_depend_on_its_own_label(data):
    pool, _ = data
    rep = make_representation(RetrievalConfig(retriever="prognostic")).fit(pool)
    before = rep.blocks[0].pool_logits_.copy()
    for i in (3, 17, 101):
        flipped = list(pool)
        flipped[i] = dataclasses.replace(pool[i], label=1 - pool[i].label,
                                         outcome_date=None if pool[i].label == 1 else pool[i].index_date + dt.timedelta(days=400))
        after = make_representation(RetrievalConfig(retriever="prognostic")).fit(flipped).blocks[0].pool_logits_
        assert after[i] == pytest.approx(before[i], abs=1e-9)           # its own score: unchanged
        assert not np.allclose(np.delete(after, i), np.delete(before, i))  # others' scores did learn from it


@pytest.mark.parametrize("kind", RETRIEVERS)
def test_a_querys_vector_ignores_its_label_and_what_follows_its_index_date(kind, data, hash_embedder):
    pool, queries = data
    rep = _fit(kind, pool, hash_embedder).representation_
    q = next(p for p in queries if p.label == 0)
    later = dataclasses.replace(
        q, label=1, outcome_date=q.index_date + dt.timedelta(days=300),
        events=[*q.events, dataclasses.replace(q.events[0], date=q.index_date + dt.timedelta(days=200), code="G30.9",
                                               name="Alzheimer's disease, unspecified")])
    np.testing.assert_array_equal(rep.transform([q]), rep.transform([later]))


def test_no_retriever_beats_age_when_labels_carry_nothing_but_age(hash_embedder):
    """Labels shuffled within 5-year age bands: the pre-index codes carry no signal beyond age, so no retriever's
    neighbour vote may beat the age-only vote by more than noise."""
    from icl_toolkit.data.synth import SynthConfig, generate_cohort
    from icl_toolkit.evaluation.retrieval import evaluate_retrievers

    cohort = generate_cohort(SynthConfig(n=2600, seed=21, prevalence=0.3))
    rng = np.random.default_rng(0)
    bands: dict[int, list[int]] = {}
    for i, p in enumerate(cohort):
        bands.setdefault(int(p.age_at_index // 5), []).append(i)
    shuffled = list(cohort)
    for idx in bands.values():
        for i, j in zip(idx, rng.permutation(idx)):
            y = cohort[j].label
            shuffled[i] = dataclasses.replace(cohort[i], label=y, outcome_date=(
                cohort[i].index_date + dt.timedelta(days=500)) if y == 1 else None)
    pool, queries = shuffled[:1800], shuffled[1800:]
    report = evaluate_retrievers(pool, queries, [RetrievalConfig(retriever=k) for k in RETRIEVERS], ks=(16,),
                                 embedder=hash_embedder, n_boot=200, latency_queries=5, progress=False)
    age = next(r for r in report.references if r["reference"] == "age only")
    half_width = (age["auroc_hi"] - age["auroc_lo"]) / 2
    for row in report.rows:
        assert row["auroc"] < age["auroc"] + max(half_width, 0.03), (row["retriever"], row["auroc"], age["auroc"])


def test_index_records_the_retriever_and_refuses_other_settings(data, tmp_path, hash_embedder):
    pool, queries = data
    folder = tmp_path / "idx"
    rep = make_representation(RetrievalConfig(retriever="prognostic"))
    DemoIndex.build(pool, rep).save(folder)
    assert (folder / "retriever.npz").is_file()
    meta = json.loads((folder / "index.json").read_text())["meta"]
    assert meta["retriever"]["kind"] == "prognostic" and meta["retriever"]["prognostic"]["weight"] == 0.5
    # the loaded index maps queries as the pool was mapped: the same demos as an index built in memory
    a = Retriever(RetrievalConfig(k=4), hash_embedder).fit(pool, folder).retrieve(queries, progress=False)
    b = Retriever(RetrievalConfig(k=4), hash_embedder).fit(pool, progress=False).retrieve(queries, progress=False)
    assert [[h.patient_id for h in x.hits] for x in a] == [[h.patient_id for h in x.hits] for x in b]
    with pytest.raises(ConfigError, match="retriever: built with 'prognostic', now 'dense'"):
        Retriever(RetrievalConfig(k=4, retriever="dense"), hash_embedder).fit(pool, folder)
    with pytest.raises(ConfigError, match=r"retriever.prognostic.weight: built with 0.5, now 0.7"):
        Retriever(RetrievalConfig(k=4, prognostic_weight=0.7)).fit(pool, folder)
    with pytest.raises(ConfigError, match="pool_hash"):
        Retriever(RetrievalConfig(k=4)).fit(pool[:-1], folder)
    (folder / "retriever.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="retriever.npz: not a readable retriever state"):
        DemoIndex.load(folder)


def test_an_index_from_before_retriever_kinds_loads_as_dense(data, tmp_path, hash_embedder):
    pool, queries = data
    folder = tmp_path / "old"
    DemoIndex.build(pool, hash_embedder).save(folder)
    record = json.loads((folder / "index.json").read_text())
    del record["meta"]["retriever"]  # as icl index build wrote it before
    (folder / "index.json").write_text(json.dumps(record))
    got = Retriever(RetrievalConfig(k=3, retriever="dense"), hash_embedder).fit(pool, folder).retrieve(queries[:3],
                                                                                                       progress=False)
    assert all(len(r.hits) == 3 for r in got)
    with pytest.raises(ConfigError, match="built with 'dense', now 'prognostic'"):
        Retriever(RetrievalConfig(k=3), hash_embedder).fit(pool, folder)


def test_a_small_pool_gets_fewer_folds_and_one_too_small_is_a_clear_error(small_cohort):
    from icl_toolkit.retrieval.representations import PrognosticBlock

    cases = [p for p in small_cohort if p.label == 1]
    controls = [p for p in small_cohort if p.label == 0][:27]
    fold = PrognosticBlock().folds_of(cases)
    same = next((a, b) for i, a in enumerate(cases) for j, b in enumerate(cases) if i < j and fold[i] == fold[j])
    rep = make_representation(RetrievalConfig(retriever="prognostic")).fit([*same, *controls])
    assert 2 <= rep.blocks[0].folds_used_ < 5  # both cases in one of 5 folds: that fold would learn from no case


def test_a_pool_too_small_to_cross_fit_falls_back_to_sparse_with_a_note(small_cohort, capsys, tmp_path, invoke):
    """Fitted directly, the block's refusal stays a clear error; given the pool, the retriever falls back."""
    from icl_toolkit.data.cohort import write_cohort
    from icl_toolkit.retrieval.retriever import Retriever

    cases = [p for p in small_cohort if p.label == 1][:1]
    controls = [p for p in small_cohort if p.label == 0][:20]
    with pytest.raises(ConfigError, match="too small even for 2 folds"):
        make_representation(RetrievalConfig(retriever="prognostic")).fit(cases + controls)
    rep = make_representation(RetrievalConfig(retriever="prognostic"), pool=cases + controls)
    assert rep.kind == "sparse" and "too small to cross-fit" in capsys.readouterr().err
    fitted = Retriever(RetrievalConfig(k=2)).fit(cases + controls, progress=False)        # prediction goes on
    assert fitted.index_.meta["retriever"]["kind"] == "sparse" and len(fitted.retrieve(controls[:1])[0].hits) == 2
    write_cohort(cases + controls, tmp_path / "pool.jsonl")
    code, text = invoke(["index", "build", "--pool", tmp_path / "pool.jsonl", "--out", tmp_path / "idx"])
    assert code == 0 and "using the sparse retriever" in text and "sparse retriever" in text


def test_icl_index_eval_end_to_end(small_cohort, tmp_path, invoke):
    from icl_toolkit.data.cohort import write_cohort

    write_cohort(small_cohort[:200], tmp_path / "pool.jsonl")
    write_cohort(small_cohort[200:300], tmp_path / "val.jsonl")
    code, text = invoke(["index", "eval", "--pool", tmp_path / "pool.jsonl", "--cohort", tmp_path / "val.jsonl",
                         "--embedder", "hash", "--k", "1,4,16", "--bootstrap", "50", "--out", tmp_path / "report"])
    assert code == 0, text
    for name in RETRIEVERS:
        assert name in text
    assert "logistic regression" in text and "age only" in text
    import csv

    rows = list(csv.DictReader((tmp_path / "report" / "retrieval_report.csv").open()))
    assert [(r["retriever"], r["k"]) for r in rows] == [(n, k) for n in RETRIEVERS for k in ("1", "4", "16")]
    assert all(float(r["auroc_lo"]) <= float(r["auroc"]) <= float(r["auroc_hi"]) and 0 <= float(r["purity"]) <= 1
               for r in rows)
    assert (tmp_path / "report" / "retrieval_report.png").stat().st_size > 0
    # an index is evaluated with its own retriever
    assert invoke(["index", "build", "--pool", tmp_path / "pool.jsonl", "--out", tmp_path / "idx",
                   "--retriever", "sparse"])[0] == 0
    code, text = invoke(["index", "eval", "--pool", tmp_path / "pool.jsonl", "--cohort", tmp_path / "val.jsonl",
                         "--index", tmp_path / "idx", "--retriever", "sparse", "--k", "4", "--bootstrap", "50"])
    assert code == 0 and "sparse" in text and "prognostic" not in text
    code, text = invoke(["index", "eval", "--pool", tmp_path / "pool.jsonl", "--cohort", tmp_path / "val.jsonl",
                         "--k", "500"])
    assert code == 1 and "the pool has 200 patients" in text


def test_a_retrieval_cache_from_before_retriever_kinds_is_reused_by_the_dense_retriever(data, tmp_path, hash_embedder):
    from icl_toolkit.retrieval.cache import RetrievalCache

    pool, queries = data
    r = Retriever(RetrievalConfig(k=3, retriever="dense"), hash_embedder).fit(pool, progress=False)
    path = tmp_path / "ret.json"
    cache = RetrievalCache.open(path, r.cache_key())
    first = cache.retrieve(r, queries[:5], progress=False)
    cache.save(path)
    record = json.loads(path.read_text())
    key = record["key"]
    config = {k: v for k, v in key["config"].items() if k in ("k", "strategy", "balance", "mmr_lambda", "seed",
                                                               "temporal_guard", "horizon_years")}
    record["key"] = {"pool_hash": key["pool_hash"], "embedder": "hash-64", "profile_version": "profile-v1",
                     "index_kind": "exact", "config": config}  # as caches were written before
    path.write_text(json.dumps(record))
    again = RetrievalCache.open(path, r.cache_key()).retrieve(r, queries[:5], progress=False)
    assert [[h.patient_id for h in x.hits] for x in again] == [[h.patient_id for h in x.hits] for x in first]
    with pytest.raises(ConfigError, match="retrieval cache does not match"):
        p = Retriever(RetrievalConfig(k=3), hash_embedder).fit(pool, progress=False)
        RetrievalCache.open(path, p.cache_key())
