"""What "similar patients" means: the patient representations behind retrieval.

Every retriever maps a patient's pre-index record to a unit vector, so that the
inner product of two vectors is their similarity and one faiss index (exact or
HNSW), every selection strategy (``similar``, ``balanced``, ``mmr``,
``random``), the leakage guards, the index metadata check and the retrieval
cache work the same for all of them (:mod:`icl_toolkit.retrieval.retriever`). A retriever
is a weighted concatenation of blocks, each block a unit vector, with weights
that sum to 1, so the similarity is the weighted sum of the blocks'
similarities:

``dense``
    the MiniLM embedding of the condensed profile (the original retriever).
``sparse``
    TF-IDF (scikit-learn, sublinear term frequency) over the pre-index codes:
    diagnoses, drugs, procedures, observations (with their text value) and
    abnormal results (``code:high``/``code:low``); cosine similarity, searched
    exactly. When the pool's vocabulary is larger than ``max_dims`` (2,048), a
    TruncatedSVD (scikit-learn) projects it to ``max_dims`` first.
``structured``
    (a block, not a retriever) closeness in age at index (a Gaussian kernel of
    about 2.5 years), sex (same or not) and years of history (a Gaussian kernel
    on the log scale), weighted 0.5 / 0.25 / 0.25. Kernels are written as
    soft-binned radial basis features, so they are inner products too.
``hybrid``
    dense, sparse and structured, weighted ``hybrid_weights`` (default 0.4 /
    0.4 / 0.2).
``prognostic``
    patients of similar prognosis: a logistic regression (scikit-learn) on the
    pool's own labels from a binary bag of pre-index codes, age and sex gives
    each patient a risk score (its logit, in units of the pool's spread); the
    block is a Gaussian kernel of bandwidth ``prognostic_bandwidth`` on that
    score. It carries ``prognostic_weight`` (default 0.5) of the similarity; the
    rest is clinical similarity (sparse 0.75, structured 0.25), which chooses
    among patients of about the same risk those with the same findings.

**Leakage (prognostic).** A query's score comes from the model fit on the whole
pool and the query's own pre-index record: its label and anything after its
index date never enter. A pool patient's score is *cross-fitted*: the pool is
split into ``folds`` folds by a hash of the patient id (not by label) and each
patient is scored by the model fit on the other folds, so its own label never
sets its own position. Without
that, the model would pull every positive pool patient towards high scores by
its own label, and high-risk queries would find positives because they are
positives (an inflated neighbour vote). Tests check both: a query's vector does
not change when its label or post-index events change, a pool patient's vector
does not change when its own label flips, and on a cohort whose labels carry no
signal beyond age no retriever's vote beats the age-only vote beyond noise.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient
from icl_toolkit.retrieval.config import RETRIEVERS, RetrievalConfig, RetrieverKind
from icl_toolkit.retrieval.embedder import ProfileEmbedder

__all__ = [
    "FEATURES_VERSION",
    "clinical_tokens",
    "prognostic_features",
    "Block",
    "DenseBlock",
    "SparseBlock",
    "StructuredBlock",
    "PrognosticBlock",
    "PatientRepresentation",
    "make_representation",
    "needs_embedder",
]

FEATURES_VERSION = 1
"""Version of the code features below; indexes built with another version are refused."""

_YEAR = 365.25


# --------------------------------------------------------------------------- features (pre-index only)


def clinical_tokens(p: Patient) -> dict[str, float]:
    """The pre-index codes of a patient as a bag (1 per code): diagnoses, drugs, procedures, observations (with
    their text value) and abnormal results (``lab:CODE:high``). Visits and normal results are left out."""
    from icl_toolkit.data.serialize import fold_history

    items, _ = fold_history(p)  # events on or before the index date only
    out: dict[str, float] = {}
    for it in items:
        if it.is_measure:
            if it.flag:
                out[f"{it.kind}:{it.code}:{it.flag}"] = 1.0
        else:
            out[f"{it.kind}:{it.code}" + (f"={it.text_value}" if it.text_value else "")] = 1.0
    return out


def prognostic_features(p: Patient) -> dict[str, float]:
    """Features of the prognostic model: each pre-index code (``system:code``), age (centred, per 10 years) and
    sex. The same features as the logistic-regression baseline of ``icl compare``."""
    feats: dict[str, float] = {f"{e.system}:{e.code}": 1.0 for e in p.history() if e.kind != "visit"}
    feats["age"] = (float(p.age_at_index) - 70.0) / 10.0
    feats["sex=F"] = 1.0 if p.sex == "F" else 0.0
    return feats


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _rbf(values: np.ndarray, centers: np.ndarray, width: float) -> np.ndarray:
    """Soft-binned Gaussian features: the inner product of two rows is a Gaussian kernel of the values' gap
    (bandwidth about ``width``); values are clamped to the centres' range."""
    v = np.clip(values, centers[0], centers[-1])
    return _unit(np.exp(-((v[:, None] - centers[None, :]) ** 2) / (width**2)))


def _grid(lo: float, hi: float, width: float) -> np.ndarray:
    return np.arange(lo - 2 * width, hi + 2 * width + 1e-9, width / 2, dtype=np.float64)


# --------------------------------------------------------------------------- blocks


class Block:
    """One unit-vector view of a patient. ``fit`` learns from the pool; ``pool_vectors`` are the pool's rows
    (cross-fitted where labels are used); ``transform`` maps other patients (queries)."""

    name: ClassVar[str]

    def fit(self, pool: Sequence[Patient], *, progress: bool = False) -> Block:
        self._pool = self.transform(pool, progress=progress)
        return self

    def pool_vectors(self) -> np.ndarray:
        return self._pool

    def transform(self, patients: Sequence[Patient], *, progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the vectors depend on besides the pool (compared when an index is loaded)."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        """Fitted parameters to save with an index."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> Block:
        """Restore what :meth:`state` saved (the pool's rows stay in the faiss index)."""
        return self


class DenseBlock(Block):
    """The MiniLM embedding of the condensed profile (:class:`~icl_toolkit.retrieval.embedder.ProfileEmbedder`)."""

    name = "dense"

    def __init__(self, embedder: ProfileEmbedder) -> None:
        self.embedder = embedder

    def transform(self, patients: Sequence[Patient], *, progress: bool = False) -> np.ndarray:
        desc = "embedding profiles" if hasattr(self, "_pool") else "embedding queries"
        return self.embedder.embed(patients, progress=progress, desc=desc)

    def fit(self, pool: Sequence[Patient], *, progress: bool = False) -> Block:
        self._pool = self.embedder.embed(pool, progress=progress, desc="embedding profiles")
        return self

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    def describe(self) -> dict[str, Any]:
        from icl_toolkit.data.serialize import PROFILE_VERSION

        return {"embedder": self.embedder.id, "profile_version": PROFILE_VERSION}


class SparseBlock(Block):
    """TF-IDF over :func:`clinical_tokens` (scikit-learn), projected by TruncatedSVD past ``max_dims``."""

    name = "sparse"

    def __init__(self, max_dims: int = 2048) -> None:
        self.max_dims = max_dims

    def _restore(self, names: Sequence[str], idf: np.ndarray, components: np.ndarray | None) -> None:
        from sklearn.feature_extraction import DictVectorizer
        from sklearn.feature_extraction.text import TfidfTransformer

        self._vec = DictVectorizer()
        self._vec.feature_names_ = list(names)
        self._vec.vocabulary_ = {n: i for i, n in enumerate(names)}
        self._tfidf = TfidfTransformer(sublinear_tf=True)
        self._tfidf.idf_ = np.asarray(idf, dtype=np.float64)
        self._components = components

    def fit(self, pool: Sequence[Patient], *, progress: bool = False) -> Block:
        from sklearn.feature_extraction import DictVectorizer
        from sklearn.feature_extraction.text import TfidfTransformer

        vec = DictVectorizer()
        counts = vec.fit_transform([clinical_tokens(p) for p in pool])
        if counts.shape[1] == 0:
            raise ConfigError("The sparse retriever found no pre-index codes in the pool; use --retriever dense.")
        tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
        components = None
        if counts.shape[1] > self.max_dims:
            from sklearn.decomposition import TruncatedSVD

            svd = TruncatedSVD(n_components=self.max_dims, random_state=0).fit(tfidf.transform(counts))
            components = svd.components_.astype(np.float32)
        self._restore(vec.feature_names_, tfidf.idf_, components)
        self._pool = self.transform(pool)
        return self

    def transform(self, patients: Sequence[Patient], *, progress: bool = False) -> np.ndarray:
        from sklearn.preprocessing import normalize

        x = normalize(self._tfidf.transform(self._vec.transform([clinical_tokens(p) for p in patients])))
        dense = (x @ self._components.T) if self._components is not None else x.toarray()
        return _unit(np.asarray(dense, dtype=np.float32))

    @property
    def dim(self) -> int:
        return int(self._components.shape[0] if self._components is not None else len(self._vec.feature_names_))

    def describe(self) -> dict[str, Any]:
        return {"features_version": FEATURES_VERSION, "max_dims": self.max_dims}

    def state(self) -> dict[str, np.ndarray]:
        out = {"names": np.array(self._vec.feature_names_, dtype=str), "idf": np.asarray(self._tfidf.idf_)}
        if self._components is not None:
            out["components"] = self._components
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> Block:
        self._restore([str(x) for x in state["names"]], state["idf"], state.get("components"))
        return self


class StructuredBlock(Block):
    """Closeness in age at index, sex and years of history (fixed kernels; nothing is learned)."""

    name = "structured"
    AGE = _grid(40.0, 110.0, 2.5)
    HISTORY = _grid(0.0, math.log1p(60.0), 0.25)
    WEIGHTS = (0.5, 0.25, 0.25)

    def transform(self, patients: Sequence[Patient], *, progress: bool = False) -> np.ndarray:
        age = np.array([p.age_at_index for p in patients], dtype=np.float64)
        hist = []
        for p in patients:
            h = p.history()
            hist.append(math.log1p((p.index_date - h[0].date).days / _YEAR) if h else 0.0)
        sex = np.array([[p.sex == "F", p.sex == "M", p.sex == "U"] for p in patients], dtype=np.float32)
        parts = (_rbf(age, self.AGE, 2.5), sex, _rbf(np.array(hist), self.HISTORY, 0.25))
        return np.hstack([math.sqrt(w) * b for w, b in zip(self.WEIGHTS, parts)]).astype(np.float32)

    @property
    def dim(self) -> int:
        return len(self.AGE) + 3 + len(self.HISTORY)

    def describe(self) -> dict[str, Any]:
        return {"structured": "age 2.5y, sex, log history 0.25"}


class PrognosticBlock(Block):
    """A Gaussian kernel on a risk score learned from the pool's labels, cross-fitted for the pool itself."""

    name = "prognostic"

    def __init__(self, bandwidth: float = 0.1, folds: int = 5, C: float = 0.1, seed: int = 0) -> None:
        self.bandwidth = bandwidth
        self.folds = folds
        self.C = C
        self.seed = seed

    def _model(self) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=5000)

    def folds_of(self, pool: Sequence[Patient], folds: int | None = None) -> np.ndarray:
        """Each pool patient's cross-fitting fold, from a hash of its subject and the seed: never from its label, so
        a patient's own label decides neither its fold nor (through the other folds' model) its score, and the
        records of one subject (several prediction times) share a fold."""
        n = folds or self.folds
        return np.array(
            [
                int.from_bytes(hashlib.sha256(f"{self.seed}:{p.subject_id}".encode()).digest()[:8], "little") % n
                for p in pool
            ]
        )

    def folds_for(self, pool: Sequence[Patient]) -> int:
        """The cross-fitting folds this pool allows: ``folds``, or fewer (down to 2) when some fold would leave no
        case or no control to learn from; 0 when not even 2 do (or a patient has no label)."""
        y = np.array([-1 if p.label is None else p.label for p in pool])
        if (y < 0).any():
            return 0

        def usable(fold: np.ndarray, n: int) -> bool:
            return all((fold == f).any() and (y[fold != f] == 1).any() and (y[fold != f] == 0).any() for f in range(n))

        return next((n for n in range(self.folds, 1, -1) if usable(self.folds_of(pool, n), n)), 0)

    def fit(self, pool: Sequence[Patient], *, progress: bool = False) -> Block:
        from sklearn.feature_extraction import DictVectorizer

        y = np.array([-1 if p.label is None else p.label for p in pool])
        if (y < 0).any():
            raise ConfigError("The prognostic retriever learns from the pool's labels; every pool patient needs one.")

        n_folds = self.folds_for(pool)
        if not n_folds:
            raise ConfigError(
                f"The prognostic retriever cross-fits its score and needs cases and controls outside "
                f"every fold; this pool ({int((y == 1).sum())} cases, {int((y == 0).sum())} controls) "
                "is too small even for 2 folds. Use --retriever sparse or dense."
            )
        fold = self.folds_of(pool, n_folds)
        self.folds_used_ = n_folds
        vec = DictVectorizer()
        x = vec.fit_transform([prognostic_features(p) for p in pool])
        crossfit = np.zeros(len(pool))
        for f in range(n_folds):
            held, train = fold == f, fold != f
            crossfit[held] = self._model().fit(x[train], y[train]).decision_function(x[held])
        final = self._model().fit(x, y)
        # one affine map for everyone (the pool's spread), so the bandwidth means the same in any cohort
        mu, sd = float(crossfit.mean()), float(crossfit.std()) or 1.0
        z = (crossfit - mu) / sd
        self._set(
            vec.feature_names_,
            final.coef_[0],
            float(final.intercept_[0]),
            mu,
            sd,
            _grid(float(z.min()), float(z.max()), self.bandwidth),
        )
        self._pool = _rbf(z, self._centers, self.bandwidth)
        self.pool_logits_ = crossfit  # cross-fitted logits: each from a model that never saw that patient's label
        return self

    def _set(
        self, names: Sequence[str], coef: np.ndarray, intercept: float, mu: float, sd: float, centers: np.ndarray
    ) -> None:
        self._names = list(names)
        self._index = {n: i for i, n in enumerate(self._names)}
        self._coef = np.asarray(coef, dtype=np.float64)
        self._intercept, self._mu, self._sd = intercept, mu, sd
        self._centers = np.asarray(centers, dtype=np.float64)

    def logits(self, patients: Sequence[Patient]) -> np.ndarray:
        """Each patient's logit from the model fit on the whole pool."""
        out = np.empty(len(patients))
        for r, p in enumerate(patients):
            out[r] = self._intercept + sum(
                self._coef[self._index[k]] * v for k, v in prognostic_features(p).items() if k in self._index
            )
        return out

    def scores(self, patients: Sequence[Patient]) -> np.ndarray:
        """Each patient's risk score from the model fit on the whole pool (logit, in pool-spread units)."""
        return (self.logits(patients) - self._mu) / self._sd

    def transform(self, patients: Sequence[Patient], *, progress: bool = False) -> np.ndarray:
        return _rbf(self.scores(patients), self._centers, self.bandwidth)

    @property
    def dim(self) -> int:
        return len(self._centers)

    def describe(self) -> dict[str, Any]:
        return {
            "features_version": FEATURES_VERSION,
            "bandwidth": self.bandwidth,
            "folds": self.folds,
            "C": self.C,
            "seed": self.seed,
        }

    def state(self) -> dict[str, np.ndarray]:
        return {
            "names": np.array(self._names, dtype=str),
            "coef": self._coef,
            "scalars": np.array([self._intercept, self._mu, self._sd]),
            "centers": self._centers,
        }

    def load_state(self, state: dict[str, np.ndarray]) -> Block:
        intercept, mu, sd = (float(x) for x in state["scalars"])
        self._set([str(x) for x in state["names"]], state["coef"], intercept, mu, sd, state["centers"])
        return self


# --------------------------------------------------------------------------- retrievers


@dataclass
class PatientRepresentation:
    """A retriever: blocks weighted so that similarity = sum of weight x block similarity (weights sum to 1)."""

    kind: str
    blocks: list[Block]
    weights: list[float]

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.weights) or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ConfigError(f"The {self.kind} retriever's weights must be >= 0 and not all 0; got {self.weights}.")
        total = sum(self.weights)
        self.weights = [w / total for w in self.weights]

    def _active(self) -> list[tuple[Block, float]]:
        return [(b, w) for b, w in zip(self.blocks, self.weights) if w > 0]

    def fit(self, pool: Sequence[Patient], *, progress: bool = False) -> PatientRepresentation:
        """Fit every block on the pool (labels only where the block needs them, cross-fitted)."""
        for block, _ in self._active():
            block.fit(pool, progress=progress)
        return self

    def _join(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.hstack([math.sqrt(w) * x for (_, w), x in zip(self._active(), parts)]).astype(np.float32)

    def pool_vectors(self) -> np.ndarray:
        """The fitted pool's rows, as the index stores them."""
        return self._join([b.pool_vectors() for b, _ in self._active()])

    def transform(self, patients: Sequence[Patient], *, progress: bool = False) -> np.ndarray:
        """Query rows (pre-index data only; never the patient's label)."""
        return self._join([b.transform(patients, progress=progress) for b, _ in self._active()])

    @property
    def dim(self) -> int:
        return sum(b.dim for b, _ in self._active())

    @property
    def embedder_id(self) -> str | None:
        dense = [b for b, _ in self._active() if isinstance(b, DenseBlock)]
        return dense[0].embedder.id if dense else None

    def describe(self) -> dict[str, Any]:
        """The retriever's settings as an index records them (compared, field by field, when it is loaded)."""
        out: dict[str, Any] = {"kind": self.kind}
        for block, w in self._active():
            out[block.name] = {"weight": round(w, 6), **block.describe()}
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {f"{b.name}.{k}": v for b, _ in self._active() for k, v in b.state().items()}

    def load_state(self, state: dict[str, np.ndarray]) -> PatientRepresentation:
        for block, _ in self._active():
            prefix = f"{block.name}."
            block.load_state({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        return self


def needs_embedder(kind: str, hybrid_weights: Sequence[float] = (0.4, 0.4, 0.2)) -> bool:
    """Whether a retriever uses the neural profile embedder (only dense and hybrid do)."""
    return kind == "dense" or (kind == "hybrid" and hybrid_weights[0] > 0)


FALLBACK: RetrieverKind = "sparse"
"""The retriever that stands in for the prognostic one on a pool too small to cross-fit its score: the prognostic
retriever's clinical part (codes), which needs no labels."""


def make_representation(
    config: RetrievalConfig, embedder: ProfileEmbedder | None = None, pool: Sequence[Patient] | None = None
) -> PatientRepresentation:
    """The retriever ``config.retriever`` with its options; ``embedder`` is needed by dense and hybrid only.

    With ``pool`` (the pool it will be fitted on): a prognostic retriever whose score cannot be cross-fitted there
    (not even 2 folds with cases and controls outside each) falls back to :data:`FALLBACK`, with a one-line note on
    stderr, instead of failing; the index then records the retriever it really is.

    Raises:
        ConfigError: an unknown retriever, or dense / hybrid without an embedder.
    """
    kind = config.retriever
    if kind == "prognostic" and pool is not None and all(p.label is not None for p in pool):
        block = PrognosticBlock(config.prognostic_bandwidth, config.folds)
        if pool and not block.folds_for(pool):
            from icl_toolkit.core.progress import stderr_console

            cases = sum(p.label == 1 for p in pool)
            stderr_console.print(
                f"note: the pool ({cases} cases, {len(pool) - cases} controls) is too small to "
                f"cross-fit the prognostic retriever's score; using the {FALLBACK} retriever "
                "(codes) instead.",
                highlight=False,
            )
            kind = FALLBACK
    if kind not in RETRIEVERS:
        raise ConfigError(f"Unknown retriever {kind!r}. Available: {', '.join(RETRIEVERS)}.")
    if needs_embedder(kind, config.hybrid_weights) and embedder is None:
        raise ConfigError(f"The {kind} retriever needs a profile embedder.")
    if kind == "dense":
        assert embedder is not None
        return PatientRepresentation(kind, [DenseBlock(embedder)], [1.0])
    if kind == "sparse":
        return PatientRepresentation(kind, [SparseBlock()], [1.0])
    if kind == "hybrid":
        d, s, x = config.hybrid_weights
        blocks: list[Block] = [
            DenseBlock(embedder) if d > 0 and embedder is not None else SparseBlock(),
            SparseBlock(),
            StructuredBlock(),
        ]
        return PatientRepresentation(kind, blocks, [d, s, x])
    w = config.prognostic_weight
    return PatientRepresentation(
        kind,
        [PrognosticBlock(config.prognostic_bandwidth, config.folds), SparseBlock(), StructuredBlock()],
        [w, (1 - w) * 0.75, (1 - w) * 0.25],
    )
