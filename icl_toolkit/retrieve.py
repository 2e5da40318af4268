"""Retrieval of demonstrations: profile embeddings, a faiss index, selection strategies.

Data flow: each pool patient's condensed profile (:func:`~icl_toolkit.serialize.condensed_profile`,
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
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from icl_toolkit.artifacts import base_meta, check_meta, content_hash, read_json, write_json_atomic
from icl_toolkit.cohort import Patient
from icl_toolkit.errors import ConfigError
from icl_toolkit.files import keep_mode
from icl_toolkit.progress import progress_bar
from icl_toolkit.retrievers import RetrieverKind, make_representation, needs_embedder
from icl_toolkit.serialize import PROFILE_VERSION, condensed_profile, token_counter

__all__ = [
    "Strategy",
    "STRATEGIES",
    "Balance",
    "IndexKind",
    "resolve_index_kind",
    "ProfileEmbedder",
    "DemoIndex",
    "faiss_index",
    "RetrievalConfig",
    "Hit",
    "Retrieval",
    "Retriever",
    "RetrievalCache",
]

Strategy = Literal["similar", "balanced", "mmr", "random"]
"""How demonstrations are chosen (see the module docstring); the one place the strategies are listed."""
STRATEGIES: tuple[str, ...] = get_args(Strategy)
Balance = Literal["half", "prevalence"]
IndexKind = Literal["auto", "exact", "hnsw"]
"""``exact`` (flat inner product), ``hnsw`` (a graph, approximate) or ``auto``: exact up to
:data:`AUTO_HNSW_ABOVE` pool patients, HNSW above (where exact search passes 10 ms a query on 2 cores)."""
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
AUTO_HNSW_ABOVE = 50_000


def resolve_index_kind(kind: str, n: int) -> str:
    """The index kind ``auto`` stands for at a pool of ``n`` patients."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"The 'kind' parameter must be one of {', '.join(INDEX_KINDS)}. Got {kind!r}.")
    if kind == "auto":
        return "hnsw" if n > AUTO_HNSW_ABOVE else "exact"
    return kind


# --------------------------------------------------------------------------- embedding

class ProfileEmbedder:
    """Embeds patients' condensed profiles; normalised float32 vectors.

    Args:
        embedder: ``"default"`` (embedded all-MiniLM-L6-v2), a local folder or a
            cached hub name; ignored when ``model`` is given.
        model: an object with sentence-transformers' ``encode`` (e.g.
            :class:`~icl_toolkit.testing.HashEmbedder`), used as is.
        model_id: the id recorded in index metadata when ``model`` is given.
        batch_size: texts per encoder batch.
    """

    def __init__(self, embedder: str = "default", *, model: Any = None, model_id: str | None = None,
                 batch_size: int = 64, device: str = "cpu") -> None:
        from icl_toolkit.models import embedder_id, load_embedder, load_embedder_tokenizer

        if model is None:
            self.model = load_embedder(embedder, device=device)
            self.id = embedder_id(embedder)
            self._counter = token_counter(load_embedder_tokenizer(embedder), special_tokens=True)
            self.max_tokens = int(getattr(self.model, "max_seq_length", 256) or 256)
        else:
            self.model = model
            self.id = model_id or type(model).__name__
            self._counter = token_counter(load_embedder_tokenizer("default"), special_tokens=True)
            self.max_tokens = 256
        getdim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getdim())
        self.batch_size = batch_size

    def profiles(self, patients: Sequence[Patient]) -> list[str]:
        """The condensed profile text of each patient (what gets embedded)."""
        return [condensed_profile(p, max_tokens=self.max_tokens, counter=self._counter).text for p in patients]

    def embed(self, patients: Sequence[Patient], *, progress: bool = True, desc: str = "embedding profiles") -> np.ndarray:
        """Normalised embeddings, shape ``[len(patients), dim]``, in input order."""
        out = np.zeros((len(patients), self.dim), dtype=np.float32)
        step = max(self.batch_size, 1)
        texts = self.profiles(patients)
        # longest first over the whole set, so each batch pads to similar lengths
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with progress_bar(desc, len(patients), progress and len(patients) > step) as advance:
            for start in range(0, len(order), step):
                rows = order[start:start + step]
                vecs = self.model.encode([texts[i] for i in rows], batch_size=step, normalize_embeddings=True,
                                         show_progress_bar=False, convert_to_numpy=True)
                out[rows] = np.asarray(vecs, dtype=np.float32)
                advance(len(rows))
        return out


# --------------------------------------------------------------------------- index

def faiss_index(vecs: np.ndarray, kind: str = "exact", *, hnsw_m: int = 32, ef_construction: int = 80,
                ef_search: int = 256) -> Any:
    """A faiss inner-product index over normalised ``vecs`` (``exact``: flat; ``hnsw``: a graph)."""
    import faiss

    kind = resolve_index_kind(kind, len(vecs))
    dim = int(vecs.shape[1])
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    return index


def _as_representation(rep: Any) -> Any:
    """A :class:`~icl_toolkit.retrievers.PatientRepresentation`; a bare :class:`ProfileEmbedder` means dense."""
    from icl_toolkit.retrievers import DenseBlock, PatientRepresentation

    if isinstance(rep, PatientRepresentation):
        return rep
    return PatientRepresentation("dense", [DenseBlock(rep)], [1.0])


def _describe(meta: dict[str, Any]) -> dict[str, Any]:
    """The retriever an index was built with; an index from before retrievers had kinds is a dense one."""
    if isinstance(meta.get("retriever"), dict):
        return meta["retriever"]
    return {"kind": "dense", "dense": {"weight": 1.0, "embedder": meta.get("embedder"),
                                       "profile_version": meta.get("profile_version")}}


@dataclass
class DemoIndex:
    """A faiss inner-product index over the pool's retriever vectors, with the pool ids, the retriever's fitted
    state and metadata."""

    index: Any
    ids: list[str]
    meta: dict[str, Any]
    state: dict[str, np.ndarray] = field(default_factory=dict)

    META_FILE = "index.json"
    INDEX_FILE = "index.faiss"
    STATE_FILE = "retriever.npz"

    @classmethod
    def build(cls, pool: Sequence[Patient], representation: Any, *, kind: str = "auto",
              hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 256,
              progress: bool = True) -> DemoIndex:
        """Fit the retriever on the pool and index the pool's vectors (``kind``: ``exact`` flat search, ``hnsw``
        for large pools, or ``auto``: exact up to 50,000 patients, HNSW above; the metadata records which). ``representation``: a retriever from
        :func:`~icl_toolkit.retrievers.make_representation`, or a :class:`ProfileEmbedder` (dense)."""
        if not pool:
            raise ConfigError("The demonstration pool is empty.")
        kind = resolve_index_kind(kind, len(pool))
        rep = _as_representation(representation)
        vecs = rep.fit(pool, progress=progress).pool_vectors()
        index = faiss_index(vecs, kind, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
        meta = base_meta("demo-index") | {
            "retriever": rep.describe(), "embedder": rep.embedder_id, "dim": int(vecs.shape[1]),
            "profile_version": PROFILE_VERSION, "pool_hash": content_hash(pool), "n": len(pool), "kind": kind,
            "hnsw": {"m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search} if kind == "hnsw" else None,
        }
        return cls(index, [p.patient_id for p in pool], meta, rep.state())

    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss``, ``index.json`` (metadata and pool ids) and the retriever's fitted state
        (``retriever.npz``) into ``folder``."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{self.INDEX_FILE}.tmp"
        faiss.write_index(self.index, str(tmp))
        keep_mode(folder / self.INDEX_FILE, tmp)
        tmp.replace(folder / self.INDEX_FILE)
        if self.state:
            tmp = folder / f".{self.STATE_FILE}.tmp.npz"
            np.savez(tmp, **self.state)
            keep_mode(folder / self.STATE_FILE, tmp)
            tmp.replace(folder / self.STATE_FILE)
        else:
            (folder / self.STATE_FILE).unlink(missing_ok=True)
        write_json_atomic(folder / self.META_FILE, {"meta": self.meta, "ids": self.ids})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> DemoIndex:
        """Read an index saved by :meth:`save` (an index saved before retrievers had kinds loads as dense)."""
        import faiss

        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no index folder here. Build one with `icl index build --pool POOL --out {folder}`.")
        rebuild = f"Rebuild it with `icl index build --pool POOL --out {folder}`."
        record = read_json(folder / cls.META_FILE, "demo index metadata")
        meta = record.get("meta") if isinstance(record, dict) else None
        ids = record.get("ids") if isinstance(record, dict) else None
        if not isinstance(meta, dict) or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConfigError(f"{folder / cls.META_FILE}: not a demo index metadata record (expected an object with "
                              f"'meta' and a list of pool ids 'ids'). {rebuild}")
        if not (folder / cls.INDEX_FILE).is_file():
            raise ConfigError(f"{folder / cls.INDEX_FILE}: missing. {rebuild}")
        try:
            index = faiss.read_index(str(folder / cls.INDEX_FILE))
        except RuntimeError as exc:  # faiss reports a damaged or truncated file as a RuntimeError
            first = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{folder / cls.INDEX_FILE}: not a readable faiss index, damaged or truncated "
                              f"({first}). {rebuild}") from None
        if index.ntotal != len(ids) or index.d != meta.get("dim"):
            raise ConfigError(f"{folder}: index.faiss holds {index.ntotal} vectors of dimension {index.d} but "
                              f"index.json lists {len(ids)} ids of dimension {meta.get('dim')}. Rebuild the index.")
        state: dict[str, np.ndarray] = {}
        if (folder / cls.STATE_FILE).is_file():
            try:
                with np.load(folder / cls.STATE_FILE, allow_pickle=False) as npz:
                    state = {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError) as exc:
                raise ConfigError(f"{folder / cls.STATE_FILE}: not a readable retriever state ({exc}). {rebuild}") \
                    from None
        meta = dict(meta)
        meta["retriever"] = _describe(meta)
        return cls(index, list(ids), meta, state)

    def check(self, pool: Sequence[Patient], representation: Any, where: str = "index") -> None:
        """Raise when the index was built from another pool, or with another retriever or other retriever settings
        (embedder, weights, features, ...), naming the field; then give ``representation`` the index's fitted
        state, so queries are mapped as the pool was."""
        rep = _as_representation(representation)
        fix = ("Rebuild it with `icl index build --pool POOL --out DIR` with these retriever settings, or use the "
               "settings it was built with (icl index info shows them).")
        built, now = _describe(self.meta), rep.describe()
        if built.get("kind") != now["kind"]:
            check_meta({"retriever": built.get("kind")}, {"retriever": now["kind"]}, what="demo index", where=where,
                       fix=fix)
        check_meta({f"retriever.{k}": v for k, v in built.items()}, {f"retriever.{k}": v for k, v in now.items()},
                   what="demo index", where=where, fix=fix)
        check_meta(self.meta, {"pool_hash": content_hash(pool)}, what="demo index", where=where, fix=fix)
        if self.ids != [p.patient_id for p in pool]:
            raise ConfigError(f"{where}: the index lists its pool patients in another order than the pool file.")
        if self.state or now["kind"] != "dense":
            try:
                rep.load_state(self.state)
            except KeyError as exc:
                raise ConfigError(f"{where}: the retriever state ({self.STATE_FILE}) lacks {exc}. {fix}") from None
        if rep.dim != self.index.d:
            raise ConfigError(f"{where}: the index holds vectors of dimension {self.index.d}, the retriever makes "
                              f"{rep.dim}. {fix}")

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss ``(scores, rows)`` of the ``n`` nearest pool rows per query (row -1 = none)."""
        n = min(n, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), n)

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """The stored vectors of some pool rows."""
        return np.stack([self.index.reconstruct(int(r)) for r in rows]) if len(rows) else \
            np.zeros((0, self.index.d), dtype=np.float32)


# --------------------------------------------------------------------------- selection

class RetrievalConfig(BaseModel):
    """How demonstrations are chosen (validated; unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(4, ge=0, le=1024)
    """Number of demonstrations per query."""
    strategy: Strategy = "similar"
    """Selection strategy (see the module docstring)."""
    balance: Balance = "half"
    """Label quotas of the ``balanced`` strategy."""
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0)
    """Relevance weight of ``mmr`` (1 = plain similarity, 0 = only diversity)."""
    seed: int = 0
    """Seed of the ``random`` strategy."""
    temporal_guard: bool = False
    """Drop demos whose outcome window ends after the query's index date."""
    horizon_years: float = Field(5.0, gt=0)
    """Length of the outcome window (for the temporal guard)."""
    retriever: RetrieverKind = "prognostic"
    """What "similar" means: ``dense`` (MiniLM profile), ``sparse`` (TF-IDF over codes), ``hybrid`` (dense +
    sparse + age/sex/history) or ``prognostic`` (similar learned risk, then similar findings); see
    :mod:`icl_toolkit.retrievers`."""
    hybrid_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    """``hybrid``: weights of the dense, sparse and structured similarities."""
    prognostic_weight: float = Field(0.5, ge=0.0, le=1.0)
    """``prognostic``: share of the similarity that is closeness in learned risk (the rest: sparse 3/4, structured
    1/4)."""
    prognostic_bandwidth: float = Field(0.1, gt=0.0, le=5.0)
    """``prognostic``: width of the risk kernel, in units of the pool's spread of risk scores."""
    folds: int = Field(5, ge=2, le=50)
    """``prognostic``: cross-fitting folds (each pool patient is scored by a model that never saw its label)."""

    @field_validator("hybrid_weights")
    @classmethod
    def _weights(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(w < 0 for w in value) or sum(value) <= 0:
            raise ValueError(f"hybrid weights must be >= 0 and not all 0, got {value}")
        return value


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

    def __init__(self, config: RetrievalConfig | None = None, embedder: ProfileEmbedder | None = None) -> None:
        self.config = config or RetrievalConfig()
        self.embedder = embedder

    def fit(self, pool: Sequence[Patient], index: DemoIndex | str | Path | None = None, *,
            index_kind: str = "auto", progress: bool = True) -> Retriever:
        """Attach the pool; load and check ``index`` (built with the same retriever and settings) or build one."""
        c = self.config
        if self.embedder is None and needs_embedder(c.retriever, c.hybrid_weights):
            self.embedder = ProfileEmbedder()
        pool = list(pool)
        if not pool:
            raise ConfigError("The demonstration pool is empty.")
        if c.k > len(pool):
            raise ConfigError(f"The 'k' parameter ({c.k}) is larger than the demonstration pool "
                              f"({len(pool)} patients). Lower --k or use a larger --pool.")
        rep = make_representation(c, self.embedder)
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
        ok = (rows >= 0)
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
        need = max(4 * c.k, 20) if c.strategy == "mmr" else c.k
        return len(rows) >= need

    def _candidates(self, query: Patient, q: np.ndarray, scores: np.ndarray, rows: np.ndarray
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
        # mmr
        pool_n = min(len(rows), max(4 * c.k, 20))
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
        first = max(4 * c.k, 20) + 8 if c.strategy in ("mmr", "balanced") else c.k + 8
        scores, rows = self.index_.search(qv, first)
        out = []
        for i, p in enumerate(queries):
            cand_rows, cand_scores = self._candidates(p, qv[i], scores[i], rows[i])
            picked = self._select(p, qv[i], cand_rows, cand_scores)
            out.append(Retrieval(p.patient_id, [self._hit(int(cand_rows[j]), float(cand_scores[j])) for j in picked]))
        return out

    def cache_key(self) -> dict[str, Any]:
        """What a retrieval depends on, for :class:`RetrievalCache`."""
        self._check_fitted()
        m = self.index_.meta
        return {"pool_hash": m["pool_hash"], "retriever": _describe(m), "index_kind": m["kind"],
                "config": self.config.model_dump(mode="json")}


# --------------------------------------------------------------------------- cache

def _upgrade_key(key: dict[str, Any]) -> dict[str, Any]:
    """A cache key from before retrievers had kinds (top-level embedder and profile version): a dense one."""
    if "retriever" in key or "embedder" not in key or not isinstance(key.get("config"), dict):
        return key
    try:
        config = RetrievalConfig(**{**key["config"], "retriever": "dense"}).model_dump(mode="json")
    except (TypeError, ValueError):
        return key
    return {"pool_hash": key.get("pool_hash"), "index_kind": key.get("index_kind"), "config": config,
            "retriever": _describe({"embedder": key["embedder"], "profile_version": key.get("profile_version")})}


def _valid_hit(h: Any) -> bool:
    return (isinstance(h, list) and len(h) == 4 and isinstance(h[0], str) and isinstance(h[1], int | float)
            and not isinstance(h[1], bool) and h[2] in (0, 1, None) and not isinstance(h[2], bool)
            and isinstance(h[3], int) and not isinstance(h[3], bool))


class RetrievalCache:
    """Saved retrievals (per query: ids, scores, labels), reused across runs and models.

    The file records what the retrievals depend on (pool hash, embedder, index
    kind, strategy settings); using it with other settings is an error.
    """

    def __init__(self, key: dict[str, Any], entries: dict[str, list[list[Any]]] | None = None) -> None:
        self.key = key
        self.entries = entries or {}
        self.path = "retrieval cache"

    @classmethod
    def open(cls, path: str | Path, key: dict[str, Any]) -> RetrievalCache:
        """Load ``path`` when it exists (checking it matches ``key``), else start an empty cache."""
        path = Path(path)
        if not path.exists():
            return cls(key)
        record = read_json(path, "retrieval cache")
        fix = "Use another --retrieval file, or delete this one to retrieve again."
        if not isinstance(record, dict) or not isinstance(record.get("key"), dict) \
                or not isinstance(record.get("queries", {}), dict):
            raise ConfigError(f"{path}: not a retrieval cache (expected an object with 'key' and 'queries'). {fix}")
        check_meta(_upgrade_key(record["key"]), key, what="retrieval cache", where=str(path), fix=fix)
        queries = record.get("queries", {})
        for qid, hits in queries.items():
            if not isinstance(hits, list) or not all(_valid_hit(h) for h in hits):
                raise ConfigError(f"{path}: queries.{qid}: expected a list of [pool id, score, label 0/1/null, pool "
                                  f"row] entries, found {json.dumps(hits)[:120]}. {fix}")
        cache = cls(key, queries)
        cache.path = str(path)
        return cache

    def get(self, query_id: str) -> Retrieval | None:
        raw = self.entries.get(query_id)
        if raw is None:
            return None
        return Retrieval(query_id, [Hit(pid, float(s), lab, int(row)) for pid, s, lab, row in raw])

    def put(self, retrievals: Iterable[Retrieval]) -> None:
        for r in retrievals:
            self.entries[r.query_id] = [[h.patient_id, h.score, h.label, h.row] for h in r.hits]

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, base_meta("retrieval-cache") | {"key": self.key, "queries": self.entries})

    def retrieve(self, retriever: Retriever, queries: Sequence[Patient], *, progress: bool = True) -> list[Retrieval]:
        """Cached retrievals where present; the rest retrieved now and added.

        Raises:
            ConfigError: a cached demonstration that is not the pool patient at its row (an edited cache).
        """
        retriever._check_fitted()
        for p in queries:
            for pid, _, _, row in self.entries.get(p.patient_id, ()):
                if not (0 <= row < len(retriever.ids_)) or retriever.ids_[row] != pid:
                    raise ConfigError(f"{self.path}: queries.{p.patient_id}: demonstration {pid!r} (row {row}) is not "
                                      "in the pool at that row; the cache was edited or made for another pool. "
                                      "Delete it to retrieve again.")
        missing = [p for p in queries if p.patient_id not in self.entries]
        self.put(retriever.retrieve(missing, progress=progress))
        return [self.get(p.patient_id) for p in queries]  # type: ignore[misc]
