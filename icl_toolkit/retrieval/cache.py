"""Saved retrievals: per query the chosen demonstrations (pool id, score, label, row), reused across runs and
models so that several arms see identical demonstrations. The file records what they depend on (pool hash,
retriever, index kind, selection settings); using it with other settings is an error."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from icl_toolkit.core.artifacts import base_meta, check_meta, read_json, write_json_atomic
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient
from icl_toolkit.retrieval.config import RetrievalConfig
from icl_toolkit.retrieval.index import describe_retriever
from icl_toolkit.retrieval.retriever import Hit, Retrieval, Retriever

__all__ = ["RetrievalCache"]


def _upgrade_key(key: dict[str, Any]) -> dict[str, Any]:
    """A cache key from before retrievers had kinds (top-level embedder and profile version): a dense one."""
    if "retriever" in key or "embedder" not in key or not isinstance(key.get("config"), dict):
        return key
    try:
        config = RetrievalConfig(**{**key["config"], "retriever": "dense"}).cache_config()
    except (TypeError, ValueError):
        return key
    return {
        "pool_hash": key.get("pool_hash"),
        "index_kind": key.get("index_kind"),
        "config": config,
        "retriever": describe_retriever({"embedder": key["embedder"], "profile_version": key.get("profile_version")}),
    }


def _valid_hit(h: Any) -> bool:
    return (
        isinstance(h, list)
        and len(h) == 4
        and isinstance(h[0], str)
        and isinstance(h[1], int | float)
        and not isinstance(h[1], bool)
        and h[2] in (0, 1, None)
        and not isinstance(h[2], bool)
        and isinstance(h[3], int)
        and not isinstance(h[3], bool)
    )


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
    def open(cls, path: str | os.PathLike[str], key: dict[str, Any]) -> RetrievalCache:
        """Load ``path`` when it exists (checking it matches ``key``), else start an empty cache."""
        path = Path(path)
        if not path.exists():
            return cls(key)
        record = read_json(path, "retrieval cache")
        fix = "Use another --retrieval file, or delete this one to retrieve again."
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("key"), dict)
            or not isinstance(record.get("queries", {}), dict)
        ):
            raise ConfigError(f"{path}: not a retrieval cache (expected an object with 'key' and 'queries'). {fix}")
        check_meta(_upgrade_key(record["key"]), key, what="retrieval cache", where=str(path), fix=fix)
        queries = record.get("queries", {})
        for qid, hits in queries.items():
            if not isinstance(hits, list) or not all(_valid_hit(h) for h in hits):
                raise ConfigError(
                    f"{path}: queries.{qid}: expected a list of [pool id, score, label 0/1/null, pool "
                    f"row] entries, found {json.dumps(hits)[:120]}. {fix}"
                )
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

    def save(self, path: str | os.PathLike[str]) -> None:
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
                    raise ConfigError(
                        f"{self.path}: queries.{p.patient_id}: demonstration {pid!r} (row {row}) is not "
                        "in the pool at that row; the cache was edited or made for another pool. "
                        "Delete it to retrieve again."
                    )
        missing = [p for p in queries if p.patient_id not in self.entries]
        self.put(retriever.retrieve(missing, progress=progress))
        return [self.get(p.patient_id) for p in queries]  # type: ignore[misc]
