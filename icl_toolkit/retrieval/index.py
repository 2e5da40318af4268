"""The demonstration pool's faiss index: the retriever's pool vectors, the pool ids, the retriever's fitted state and
a metadata record (what built it, from which pool, with which retriever settings), saved as a folder and checked
field by field when loaded with a pool and settings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from icl_toolkit.core.artifacts import base_meta, check_meta, read_json, write_json_atomic
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.files import keep_mode
from icl_toolkit.data.cohort import Patient, content_hash
from icl_toolkit.data.serialize import PROFILE_VERSION
from icl_toolkit.retrieval.config import RetrievalConfig
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.representations import (
    DenseBlock,
    PatientRepresentation,
    make_representation,
    needs_embedder,
)

__all__ = [
    "IndexKind",
    "INDEX_KINDS",
    "AUTO_HNSW_ABOVE",
    "resolve_index_kind",
    "faiss_index",
    "DemoIndex",
    "build_index",
]

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


def faiss_index(
    vecs: np.ndarray, kind: str = "exact", *, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 256
) -> Any:
    """A faiss inner-product index over normalised ``vecs`` (``exact``: flat; ``hnsw``: a graph)."""
    import faiss

    kind = resolve_index_kind(kind, len(vecs))
    dim = int(vecs.shape[1])
    index: Any
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    return index


def _as_representation(rep: PatientRepresentation | ProfileEmbedder) -> PatientRepresentation:
    """A :class:`~icl_toolkit.retrieval.representations.PatientRepresentation`; a bare :class:`ProfileEmbedder` means dense."""
    if isinstance(rep, PatientRepresentation):
        return rep
    return PatientRepresentation("dense", [DenseBlock(rep)], [1.0])


def describe_retriever(meta: dict[str, Any]) -> dict[str, Any]:
    """The retriever an index was built with; an index from before retrievers had kinds is a dense one."""
    if isinstance(meta.get("retriever"), dict):
        return meta["retriever"]
    return {
        "kind": "dense",
        "dense": {"weight": 1.0, "embedder": meta.get("embedder"), "profile_version": meta.get("profile_version")},
    }


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
    def build(
        cls,
        pool: Sequence[Patient],
        representation: PatientRepresentation | ProfileEmbedder,
        *,
        kind: str = "auto",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
        progress: bool = True,
        task: str | None = None,
    ) -> DemoIndex:
        """Fit the retriever on the pool and index the pool's vectors (``kind``: ``exact`` flat search, ``hnsw``
        for large pools, or ``auto``: exact up to 50,000 patients, HNSW above; the metadata records which). ``representation``: a retriever from
        :func:`~icl_toolkit.retrieval.representations.make_representation`, or a :class:`ProfileEmbedder` (dense).
        ``task``: the name of the task the pool's labels answer, recorded in the metadata (a predictor of another
        task refuses the index; an index without one answers the default task)."""
        if not pool:
            raise ConfigError("The demonstration pool is empty.")
        kind = resolve_index_kind(kind, len(pool))
        rep = _as_representation(representation)
        vecs = rep.fit(pool, progress=progress).pool_vectors()
        index = faiss_index(vecs, kind, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
        meta = (
            base_meta("demo-index")
            | {
                "retriever": rep.describe(),
                "embedder": rep.embedder_id,
                "dim": int(vecs.shape[1]),
                "profile_version": PROFILE_VERSION,
                "pool_hash": content_hash(pool),
                "n": len(pool),
                "kind": kind,
                "hnsw": {"m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
                if kind == "hnsw"
                else None,
            }
            | ({"task": task} if task is not None else {})
        )
        return cls(index, [p.patient_id for p in pool], meta, rep.state())

    def save(self, folder: str | os.PathLike[str]) -> Path:
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
            np.savez(tmp, **self.state)  # type: ignore[arg-type]  # numpy's stub: names -> arrays
            keep_mode(folder / self.STATE_FILE, tmp)
            tmp.replace(folder / self.STATE_FILE)
        else:
            (folder / self.STATE_FILE).unlink(missing_ok=True)
        write_json_atomic(folder / self.META_FILE, {"meta": self.meta, "ids": self.ids})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> DemoIndex:
        """Read an index saved by :meth:`save` (an index saved before retrievers had kinds loads as dense)."""
        import faiss

        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(
                f"{folder}: no index folder here. Build one with `icl index build --pool POOL --out {folder}`."
            )
        rebuild = f"Rebuild it with `icl index build --pool POOL --out {folder}`."
        record = read_json(folder / cls.META_FILE, "demo index metadata")
        meta = record.get("meta") if isinstance(record, dict) else None
        ids = record.get("ids") if isinstance(record, dict) else None
        if not isinstance(meta, dict) or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConfigError(
                f"{folder / cls.META_FILE}: not a demo index metadata record (expected an object with "
                f"'meta' and a list of pool ids 'ids'). {rebuild}"
            )
        if not (folder / cls.INDEX_FILE).is_file():
            raise ConfigError(f"{folder / cls.INDEX_FILE}: missing. {rebuild}")
        try:
            index = faiss.read_index(str(folder / cls.INDEX_FILE))
        except RuntimeError as exc:  # faiss reports a damaged or truncated file as a RuntimeError
            first = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"{folder / cls.INDEX_FILE}: not a readable faiss index, damaged or truncated ({first}). {rebuild}"
            ) from None
        if index.ntotal != len(ids) or index.d != meta.get("dim"):
            raise ConfigError(
                f"{folder}: index.faiss holds {index.ntotal} vectors of dimension {index.d} but "
                f"index.json lists {len(ids)} ids of dimension {meta.get('dim')}. Rebuild the index."
            )
        state: dict[str, np.ndarray] = {}
        if (folder / cls.STATE_FILE).is_file():
            try:
                with np.load(folder / cls.STATE_FILE, allow_pickle=False) as npz:
                    state = {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError) as exc:
                raise ConfigError(
                    f"{folder / cls.STATE_FILE}: not a readable retriever state ({exc}). {rebuild}"
                ) from None
        meta = dict(meta)
        meta["retriever"] = describe_retriever(meta)
        return cls(index, list(ids), meta, state)

    def check(
        self, pool: Sequence[Patient], representation: PatientRepresentation | ProfileEmbedder, where: str = "index"
    ) -> None:
        """Raise when the index was built from another pool, or with another retriever or other retriever settings
        (embedder, weights, features, ...), naming the field; then give ``representation`` the index's fitted
        state, so queries are mapped as the pool was."""
        rep = _as_representation(representation)
        fix = (
            "Rebuild it with `icl index build --pool POOL --out DIR` with these retriever settings, or use the "
            "settings it was built with (icl index info shows them)."
        )
        built, now = describe_retriever(self.meta), rep.describe()
        if built.get("kind") != now["kind"]:
            check_meta(
                {"retriever": built.get("kind")}, {"retriever": now["kind"]}, what="demo index", where=where, fix=fix
            )
        check_meta({"retriever": built}, {"retriever": now}, what="demo index", where=where, fix=fix)
        check_meta(self.meta, {"pool_hash": content_hash(pool)}, what="demo index", where=where, fix=fix)
        if self.ids != [p.patient_id for p in pool]:
            raise ConfigError(f"{where}: the index lists its pool patients in another order than the pool file.")
        if self.state or now["kind"] != "dense":
            try:
                rep.load_state(self.state)
            except KeyError as exc:
                raise ConfigError(f"{where}: the retriever state ({self.STATE_FILE}) lacks {exc}. {fix}") from None
        if rep.dim != self.index.d:
            raise ConfigError(
                f"{where}: the index holds vectors of dimension {self.index.d}, the retriever makes {rep.dim}. {fix}"
            )

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss ``(scores, rows)`` of the ``n`` nearest pool rows per query (row -1 = none)."""
        n = min(n, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), n)

    def vectors(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of some pool rows."""
        return (
            np.stack([self.index.reconstruct(int(r)) for r in rows])
            if len(rows)
            else np.zeros((0, self.index.d), dtype=np.float32)
        )


def build_index(
    pool: Sequence[Patient],
    config: RetrievalConfig | None = None,
    *,
    embedder: ProfileEmbedder | None = None,
    kind: str = "auto",
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    task: str | None = None,
) -> DemoIndex:
    """Fit a retriever on a demonstration pool and index the pool (``icl index build`` as a function).

    Args:
        pool: the demonstration pool (labelled patients).
        config: which retriever and its settings (default :class:`~icl_toolkit.retrieval.config.RetrievalConfig`
            (): the prognostic retriever).
        embedder: the profile embedder of the dense and hybrid retrievers (default: the embedded MiniLM, loaded
            only when the retriever needs it).
        kind: ``exact``, ``hnsw`` or ``auto`` (exact up to 50,000 patients).
        out: also save the index in this folder.
        progress: show progress bars.
        task: the name of the task the pool's labels answer, recorded in the index's metadata (a predictor for
            another task refuses the index).

    Returns:
        The index, with its metadata (what built it, from which pool).

    Raises:
        ConfigError: an empty pool, an unknown kind.
    """
    config = config or RetrievalConfig()
    if embedder is None and needs_embedder(config.retriever, config.hybrid_weights):
        embedder = ProfileEmbedder()
    index = DemoIndex.build(pool, make_representation(config, embedder, pool), kind=kind, progress=progress, task=task)
    if out is not None:
        index.save(out)
    return index
