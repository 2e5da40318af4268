"""Retrieval of demonstrations: profile embeddings, a faiss index, selection strategies.

Data flow: each pool patient's condensed profile (:func:`~icl_toolkit.data.serialize.condensed_profile`,
under the embedder's 256-token limit, pre-index events only) is embedded with a
sentence-transformers model, normalised, and stored in a faiss inner-product
index, so scores are cosine similarities. A query patient is embedded the same
way and its demonstrations are chosen by a strategy:

``similar``
    the k most similar pool patients.
``balanced``
    the most similar positives and negatives under label quotas: half and half
    (``balance="half"``, rounding toward negatives) or matched to the pool
    prevalence (``balance="prevalence"``); when one class runs short the other
    fills the gap.
``mmr``
    maximal marginal relevance: greedily the candidate maximising
    ``lambda * sim(query, d) - (1 - lambda) * max sim(d, chosen)`` among the
    ``max(4k, 20)`` most similar.
``random``
    k pool patients drawn uniformly, seeded per query (the same query gets the
    same demonstrations whatever else is in the batch).
``gain``
    the ``gain_candidates`` most similar, re-ranked by each candidate's gain
    score (what it did for the model as a demonstration, cross-fitted on the
    pool: :mod:`icl_toolkit.inference.gain`); the k best are shown, ties broken
    by similarity.

Leakage guards, always on: a pool record of the query's subject (``Patient.subject_id``:
the same ``patient_id``, or the same MEDS subject at another prediction time) is never
a demonstration (also when the pool holds it several times). Optional temporal
guard: a demonstration whose outcome window (index date + horizon) ends after the
query's index date is dropped, so no demo's outcome lies in the query's future.

Hits come back as plain data, sorted by score (most similar first); the prompt
builder applies the presentation order. :class:`RetrievalCache` saves them so that
several runs and models see identical demonstrations.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient, check_patients
from icl_toolkit.data.task import ADRD
from icl_toolkit.retrieval.config import RetrievalConfig
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.gain import GainScores
from icl_toolkit.retrieval.index import DemoIndex, describe_retriever
from icl_toolkit.retrieval.representations import make_representation, needs_embedder

__all__ = ["Hit", "Retrieval", "Retriever"]


@dataclass(frozen=True, slots=True)
class Hit:
    """One chosen demonstration: pool patient id, cosine score, label, pool row."""

    patient_id: str
    score: float
    label: int | None
    row: int


@dataclass(slots=True)
class Retrieval:
    """The demonstrations chosen for one query, most similar first."""

    query_id: str
    hits: list[Hit] = field(default_factory=list)


def _window_end(index_date: dt.date, years: float) -> dt.date:
    """The end of the outcome window (the last representable date when it would fall past year 9999)."""
    try:
        return index_date + dt.timedelta(days=round(years * 365.25))
    except OverflowError:
        return dt.date.max


def _quotas(k: int, balance: str, prevalence: float) -> tuple[int, int]:
    n_pos = k // 2 if balance == "half" else int(math.floor(k * prevalence + 0.5))
    return n_pos, k - n_pos


class Retriever:
    """Chooses demonstrations for query patients from a fitted pool.

    Follows the estimator contract: ``__init__`` stores settings, :meth:`fit`
    builds or loads the index and returns self, :meth:`retrieve` raises when
    the retriever is not fitted.
    """

    def __init__(
        self,
        config: RetrievalConfig | None = None,
        embedder: ProfileEmbedder | None = None,
        *,
        gain: GainScores | None = None,
    ) -> None:
        self.config = config or RetrievalConfig()
        self.embedder = embedder
        self.gain = gain

    def fit(
        self,
        pool: Sequence[Patient],
        index: DemoIndex | str | os.PathLike[str] | None = None,
        *,
        index_kind: str = "auto",
        progress: bool = True,
    ) -> Retriever:
        """Attach the pool; load and check ``index`` (built with the same retriever and settings) or build one."""
        pool = check_patients(pool, "pool")
        c = self.config
        if self.embedder is None and needs_embedder(c.retriever, c.hybrid_weights):
            self.embedder = ProfileEmbedder()
        if not pool:
            raise ConfigError("The demonstration pool is empty.")
        if c.k > len(pool):
            raise ConfigError(
                f"The 'k' parameter ({c.k}) is larger than the demonstration pool "
                f"({len(pool)} patients). Lower --k or use a larger --pool."
            )
        if c.strategy == "gain" and c.k > 0:
            if self.gain is None:
                raise ConfigError(
                    "strategy gain needs the pool's gain scores (computed with `icl index gain`, stored with the "
                    "index); none were given."
                )
            self.gain.check_pool(pool)
        rep = make_representation(c, self.embedder, pool)
        if index is None:
            index = DemoIndex.build(pool, rep, kind=index_kind, progress=progress)
        else:
            where = str(index) if not isinstance(index, DemoIndex) else "index"
            if not isinstance(index, DemoIndex):
                index = DemoIndex.load(index)
            index.check(pool, rep, where)
        self.pool_ = pool
        self.index_ = index
        self.representation_ = rep
        self.labels_ = np.array([-1 if p.label is None else p.label for p in pool])
        self.ids_ = np.array([p.patient_id for p in pool], dtype=object)
        self.subjects_ = np.array([p.subject_id for p in pool], dtype=object)
        self.window_ends_ = np.array([_window_end(p.index_date, c.horizon_years) for p in pool])
        known = self.labels_[self.labels_ >= 0]
        self.prevalence_ = float(known.mean()) if len(known) else 0.0
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise ConfigError("This Retriever is not fitted yet. Call fit(pool) first.")

    def _eligible(self, query: Patient, rows: np.ndarray) -> np.ndarray:
        ok = rows >= 0
        ok[ok] &= self.subjects_[rows[ok]] != query.subject_id
        if self.config.temporal_guard:
            ok[ok] &= self.window_ends_[rows[ok]] <= query.index_date
        return rows[ok]

    def _enough(self, rows: np.ndarray) -> bool:
        c = self.config
        if c.strategy == "balanced":
            n_pos, n_neg = _quotas(c.k, c.balance, self.prevalence_)
            labels = self.labels_[rows]
            return int((labels == 1).sum()) >= n_pos and int((labels == 0).sum()) >= n_neg
        return len(rows) >= self._wanted()

    def _wanted(self) -> int:
        """How many eligible candidates a (non-balanced) strategy chooses among."""
        c = self.config
        if c.strategy == "mmr":
            return max(4 * c.k, 20)
        return max(c.gain_candidates, c.k) if c.strategy == "gain" else c.k

    def _candidates(
        self, query: Patient, q: np.ndarray, scores: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Eligible candidate rows with scores, widening the search until enough are found."""
        total = self.index_.index.ntotal
        n = len(rows)
        while True:
            keep = self._eligible(query, rows.copy())
            pos = {r: s for r, s in zip(rows.tolist(), scores.tolist())}
            if self._enough(keep) or n >= total:
                return keep, np.array([pos[r] for r in keep.tolist()], dtype=np.float32)
            n = min(total, n * 4)
            s2, r2 = self.index_.search(q[None, :], n)
            scores, rows = s2[0], r2[0]

    def _select(self, query: Patient, q: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> list[int]:
        c = self.config
        if c.strategy == "similar":
            return list(range(min(c.k, len(rows))))
        if c.strategy == "balanced":
            labels = self.labels_[rows]
            n_pos, n_neg = _quotas(c.k, c.balance, self.prevalence_)
            pos = [i for i in range(len(rows)) if labels[i] == 1]
            neg = [i for i in range(len(rows)) if labels[i] == 0]
            take_pos, take_neg = pos[:n_pos], neg[:n_neg]
            short = c.k - len(take_pos) - len(take_neg)
            if short > 0:  # fill from whichever class has more left
                rest = [i for i in range(len(rows)) if i not in set(take_pos) | set(take_neg)]
                take_pos += rest[:short]
            return sorted(take_pos + take_neg)
        if c.strategy == "gain":
            assert self.gain is not None
            n = min(len(rows), self._wanted())
            gains = [self.gain.scores.get(str(self.ids_[rows[i]]), 0.0) for i in range(n)]
            return sorted(sorted(range(n), key=lambda i: (-gains[i], -scores[i], i))[: c.k])
        # mmr
        pool_n = min(len(rows), self._wanted())
        vecs = self.index_.vectors(rows[:pool_n])
        rel = scores[:pool_n]
        chosen: list[int] = []
        max_sim = np.full(pool_n, -np.inf, dtype=np.float32)
        for _ in range(min(c.k, pool_n)):
            div = np.where(np.isfinite(max_sim), max_sim, 0.0)
            value = c.mmr_lambda * rel - (1 - c.mmr_lambda) * div
            value[chosen] = -np.inf
            best = int(np.argmax(value))
            chosen.append(best)
            max_sim = np.maximum(max_sim, vecs @ vecs[best])
        return sorted(chosen, key=lambda i: -rel[i])

    def _random(self, query: Patient, q: np.ndarray) -> Retrieval:
        c = self.config
        import hashlib

        digest = hashlib.sha256(f"{c.seed}:{query.patient_id}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        order = rng.permutation(self.index_.index.ntotal)
        rows = self._eligible(query, order)[: c.k]
        scores = self.index_.vectors(rows) @ q if len(rows) else np.zeros(0)
        hits = [self._hit(int(r), float(s)) for r, s in zip(rows, scores)]
        return Retrieval(query.patient_id, sorted(hits, key=lambda h: -h.score))

    def _hit(self, row: int, score: float) -> Hit:
        label = int(self.labels_[row])
        return Hit(str(self.ids_[row]), round(score, 6), None if label < 0 else label, row)

    def retrieve(self, queries: Sequence[Patient], *, progress: bool = True) -> list[Retrieval]:
        """Choose demonstrations for each query patient, in input order."""
        self._check_fitted()
        c = self.config
        queries = list(queries)
        if not queries:
            return []
        if c.k == 0:
            return [Retrieval(p.patient_id) for p in queries]
        qv = self.representation_.transform(queries, progress=progress)
        if c.strategy == "random":
            return [self._random(p, qv[i]) for i, p in enumerate(queries)]
        first = max(4 * c.k, 20) + 8 if c.strategy == "balanced" else self._wanted() + 8
        scores, rows = self.index_.search(qv, first)
        out = []
        for i, p in enumerate(queries):
            cand_rows, cand_scores = self._candidates(p, qv[i], scores[i], rows[i])
            picked = self._select(p, qv[i], cand_rows, cand_scores)
            out.append(Retrieval(p.patient_id, [self._hit(int(cand_rows[j]), float(cand_scores[j])) for j in picked]))
        return out

    def cache_key(self, task: str = ADRD.name) -> dict[str, Any]:
        """What a retrieval depends on, for :class:`RetrievalCache` (``task``: the task's name; a cache of the
        default task keeps the key it had before tasks existed)."""
        self._check_fitted()
        m = self.index_.meta
        return (
            ({"task": task} if task != ADRD.name else {})
            | {
                "pool_hash": m["pool_hash"],
                "retriever": describe_retriever(m),
                "index_kind": m["kind"],
                "config": self.config.cache_config(),
            }
            | ({"gain": self.gain.digest} if self.config.strategy == "gain" and self.gain is not None else {})
        )
