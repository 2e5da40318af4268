"""Retrieval: exactness against brute force, leakage guards, quotas, index metadata, cache."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from icl_toolkit.core.artifacts import ArtifactMismatch
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.retrieval.cache import RetrievalCache
from icl_toolkit.retrieval.config import RetrievalConfig
from icl_toolkit.retrieval.index import DemoIndex
from icl_toolkit.retrieval.retriever import Retriever


class VectorEmbedder:
    """Looks up a fixed vector per patient id (random data for exactness tests)."""

    id = "vectors"

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.dim = len(next(iter(vectors.values())))

    def embed(self, patients, *, progress=True, desc=""):
        return np.stack([self.vectors[p.patient_id] for p in patients]).astype(np.float32)


def _unit(rng, n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data(small_cohort):
    rng = np.random.default_rng(5)
    pool = list(small_cohort[:250])
    queries = [dataclasses.replace(p, patient_id=f"Q{i}") for i, p in enumerate(small_cohort[250:])]
    vecs = _unit(rng, len(pool) + len(queries), 32)
    table = {p.patient_id: vecs[i] for i, p in enumerate(pool + queries)}
    return pool, queries, VectorEmbedder(table)


def _brute(emb, pool, q, k, exclude=None):
    mat = np.stack([emb.vectors[p.patient_id] for p in pool])
    sims = mat @ emb.vectors[q.patient_id]
    order = [i for i in np.argsort(-sims, kind="stable") if pool[i].patient_id != exclude]
    return [pool[i].patient_id for i in order[:k]], [float(sims[i]) for i in order[:k]]


def test_similar_equals_brute_force_cosine_top_k(data):
    pool, queries, emb = data
    r = Retriever(RetrievalConfig(retriever="dense", k=6), emb).fit(pool, progress=False)
    for q, got in zip(queries, r.retrieve(queries, progress=False)):
        ids, scores = _brute(emb, pool, q, 6)
        assert [h.patient_id for h in got.hits] == ids
        np.testing.assert_allclose([h.score for h in got.hits], scores, atol=1e-5)


def test_self_is_never_retrieved_even_with_duplicates_in_pool(data):
    pool, _, emb = data
    # every query is in the pool, and the first ten are in it three times
    dup_pool = pool + pool[:10] + pool[:10]
    r = Retriever(RetrievalConfig(retriever="dense", k=5), emb).fit(dup_pool, progress=False)
    queries = pool[:40]
    for q, got in zip(queries, r.retrieve(queries, progress=False)):
        assert q.patient_id not in [h.patient_id for h in got.hits]
        assert len(got.hits) == 5
    for strategy in ("balanced", "mmr", "random"):
        r = Retriever(RetrievalConfig(retriever="dense", k=5, strategy=strategy), emb).fit(dup_pool, progress=False)
        for q, got in zip(queries, r.retrieve(queries, progress=False)):
            assert q.patient_id not in [h.patient_id for h in got.hits], strategy


@pytest.mark.parametrize("balance,k", [("half", 4), ("half", 5), ("prevalence", 8)])
def test_balanced_quotas_hold(data, balance, k):
    pool, queries, emb = data
    r = Retriever(RetrievalConfig(retriever="dense", k=k, strategy="balanced", balance=balance), emb).fit(pool, progress=False)
    prevalence = np.mean([p.label for p in pool])
    n_pos = k // 2 if balance == "half" else int(np.floor(k * prevalence + 0.5))
    for got in r.retrieve(queries, progress=False):
        labels = [h.label for h in got.hits]
        assert labels.count(1) == n_pos and labels.count(0) == k - n_pos
        # within each class, the most similar ones were taken
        scores = [h.score for h in got.hits]
        assert scores == sorted(scores, reverse=True)


def test_balanced_fills_from_the_other_class_when_one_runs_short(data):
    pool, queries, emb = data
    few_pos = [p for p in pool if p.label == 0] + [p for p in pool if p.label == 1][:1]
    r = Retriever(RetrievalConfig(retriever="dense", k=4, strategy="balanced"), emb).fit(few_pos, progress=False)
    for got in r.retrieve(queries[:10], progress=False):
        labels = [h.label for h in got.hits]
        assert len(labels) == 4 and labels.count(1) == 1


def test_mmr_lambda_one_is_plain_similarity_and_lower_lambda_diversifies(data):
    pool, queries, emb = data
    plain = Retriever(RetrievalConfig(retriever="dense", k=5), emb).fit(pool, progress=False).retrieve(queries, progress=False)
    mmr1 = Retriever(RetrievalConfig(retriever="dense", k=5, strategy="mmr", mmr_lambda=1.0), emb).fit(pool, progress=False)
    assert [[h.patient_id for h in r.hits] for r in mmr1.retrieve(queries, progress=False)] == \
        [[h.patient_id for h in r.hits] for r in plain]
    mmr = Retriever(RetrievalConfig(retriever="dense", k=5, strategy="mmr", mmr_lambda=0.3), emb).fit(pool, progress=False)
    div_plain, div_mmr = [], []
    for a, b in zip(plain, mmr.retrieve(queries, progress=False)):
        for hits, acc in ((a.hits, div_plain), (b.hits, div_mmr)):
            v = np.stack([emb.vectors[h.patient_id] for h in hits])
            sims = v @ v.T
            acc.append(sims[np.triu_indices(len(hits), 1)].mean())
    assert np.mean(div_mmr) < np.mean(div_plain)  # chosen demos are less alike


def test_random_is_seeded_per_query(data):
    pool, queries, emb = data
    r = Retriever(RetrievalConfig(retriever="dense", k=4, strategy="random", seed=3), emb).fit(pool, progress=False)
    a = r.retrieve(queries, progress=False)
    b = r.retrieve(queries[::-1], progress=False)[::-1]
    assert [[h.patient_id for h in x.hits] for x in a] == [[h.patient_id for h in x.hits] for x in b]
    other = Retriever(RetrievalConfig(retriever="dense", k=4, strategy="random", seed=4), emb).fit(pool, progress=False)
    assert [x.hits for x in other.retrieve(queries, progress=False)] != [x.hits for x in a]


def test_temporal_guard_drops_demos_whose_window_ends_after_the_query_index(data):
    pool, queries, emb = data
    r = Retriever(RetrievalConfig(retriever="dense", k=4, temporal_guard=True), emb).fit(pool, progress=False)
    by_id = {p.patient_id: p for p in pool}
    late = [dataclasses.replace(q, index_date=q.index_date + dt.timedelta(days=365 * 6)) for q in queries]
    n_hits = 0
    for q, got in zip(late, r.retrieve(late, progress=False)):
        for h in got.hits:
            end = by_id[h.patient_id].index_date + dt.timedelta(days=round(5 * 365.25))
            assert end <= q.index_date
            n_hits += 1
    assert n_hits > 0


def test_index_round_trip_and_mismatch_errors(data, tmp_path):
    pool, queries, emb = data
    index = DemoIndex.build(pool, emb, progress=False)
    index.save(tmp_path / "idx")
    loaded = DemoIndex.load(tmp_path / "idx")
    assert loaded.meta["pool_hash"] == index.meta["pool_hash"] and loaded.ids == index.ids
    a = Retriever(RetrievalConfig(retriever="dense", k=3), emb).fit(pool, tmp_path / "idx").retrieve(queries, progress=False)
    b = Retriever(RetrievalConfig(retriever="dense", k=3), emb).fit(pool, index).retrieve(queries, progress=False)
    assert [x.hits for x in a] == [x.hits for x in b]
    with pytest.raises(ArtifactMismatch, match="pool_hash"):
        Retriever(RetrievalConfig(retriever="dense", k=3), emb).fit(pool[:-1], tmp_path / "idx")
    other = VectorEmbedder(emb.vectors)
    other.id = "another-embedder"
    with pytest.raises(ArtifactMismatch, match="embedder"):
        Retriever(RetrievalConfig(retriever="dense", k=3), other).fit(pool, tmp_path / "idx")
    with pytest.raises(ConfigError, match="no index folder"):
        DemoIndex.load(tmp_path / "missing")


def test_hnsw_recall_against_exact(data):
    pool, queries, emb = data
    exact = Retriever(RetrievalConfig(retriever="dense", k=8), emb).fit(pool, progress=False).retrieve(queries, progress=False)
    hnsw = Retriever(RetrievalConfig(retriever="dense", k=8), emb).fit(pool, index_kind="hnsw", progress=False).retrieve(queries, progress=False)
    recall = np.mean([len({h.patient_id for h in a.hits} & {h.patient_id for h in b.hits}) / 8
                      for a, b in zip(exact, hnsw)])
    assert recall >= 0.95


def test_k_larger_than_pool_is_an_error(data):
    pool, _, emb = data
    with pytest.raises(ConfigError, match="larger than the demonstration pool"):
        Retriever(RetrievalConfig(retriever="dense", k=10), emb).fit(pool[:5])


def test_retrieval_cache_reuse_and_mismatch(data, tmp_path):
    pool, queries, emb = data
    r = Retriever(RetrievalConfig(retriever="dense", k=4, strategy="random", seed=1), emb).fit(pool, progress=False)
    path = tmp_path / "ret.json"
    cache = RetrievalCache.open(path, r.cache_key())
    first = cache.retrieve(r, queries[:20], progress=False)
    cache.save(path)
    again = RetrievalCache.open(path, r.cache_key())
    assert set(again.entries) == {q.patient_id for q in queries[:20]}
    assert [x.hits for x in again.retrieve(r, queries[:20], progress=False)] == [x.hits for x in first]
    r2 = Retriever(RetrievalConfig(retriever="dense", k=4, strategy="random", seed=2), emb).fit(pool, progress=False)
    with pytest.raises(ArtifactMismatch, match="retrieval cache"):
        RetrievalCache.open(path, r2.cache_key())


def test_real_embedder_profiles_retrieve_similar_patients(small_cohort, minilm):
    pool, queries = small_cohort[:200], small_cohort[200:230]
    r = Retriever(RetrievalConfig(retriever="dense", k=4), minilm).fit(pool, progress=False)
    got = r.retrieve(queries, progress=False)
    assert minilm.dim == 384 and all(len(x.hits) == 4 for x in got)
    assert all(-1.0 <= h.score <= 1.0001 for x in got for h in x.hits)
    # same-sex neighbours are more common than chance: the profile carries demographics
    by_id = {p.patient_id: p for p in pool}
    same = np.mean([by_id[h.patient_id].sex == q.sex for q, x in zip(queries, got) for h in x.hits])
    assert same > 0.6
