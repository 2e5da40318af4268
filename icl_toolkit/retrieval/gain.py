"""Gain scores: what each pool patient does for one model when it is shown as a demonstration.

Computed by :func:`icl_toolkit.inference.gain.compute_gain` (it needs the model) and stored with the index as
``gain.json``; read here by the ``gain`` strategy, which re-ranks the most similar candidates by them. A file
records the model it was computed with, and a predictor with another model refuses it by name: a score says what
a demo did for *that* model's log-probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_toolkit.core.artifacts import read_json, text_hash, write_json_atomic
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient, content_hash

__all__ = ["GainScores", "GAIN_FILE"]

GAIN_FILE = "gain.json"


@dataclass
class GainScores:
    """A gain score per pool patient (higher: a more helpful demonstration for ``meta["model_id"]``)."""

    scores: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    """The raw gains of the candidates whose gain was measured (before cross-fitted smoothing)."""

    @property
    def model_id(self) -> str:
        return str(self.meta.get("model_id", "?"))

    @property
    def digest(self) -> str:
        """A content hash of the scores and the model (for retrieval caches)."""
        body = ";".join(f"{k}={v:.6f}" for k, v in sorted(self.scores.items()))
        return text_hash(f"{self.model_id}|{body}")

    def check_model(self, model_id: str, where: str = "gain scores") -> None:
        """Refuse scores computed with another model.

        Raises:
            ConfigError: naming both models and the fix.
        """
        if self.model_id != model_id:
            raise ConfigError(
                f"{where}: the gain scores were computed with model {self.model_id!r}, not {model_id!r}; a gain "
                "score says what a demo did for one model. Run `icl index gain` with this model (into another "
                "index folder), or predict with that model."
            )

    def check_pool(self, pool: Sequence[Patient], where: str = "gain scores") -> None:
        """Refuse scores of another pool (by content hash)."""
        want = content_hash(pool)
        if self.meta.get("pool_hash") != want:
            raise ConfigError(
                f"{where}: the gain scores belong to another demonstration pool ({self.meta.get('pool_hash')}, "
                f"this pool is {want}); recompute them with `icl index gain` on this pool."
            )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / GAIN_FILE
        write_json_atomic(path, {"meta": self.meta, "scores": self.scores, "measured": self.measured})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GainScores:
        data = read_json(Path(path), "gain scores")
        if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
            raise ConfigError(f"{path}: not a gain-scores file (no 'scores' table); recompute it with icl index gain.")
        return cls(
            {str(k): float(v) for k, v in data["scores"].items()},
            dict(data.get("meta") or {}),
            {str(k): float(v) for k, v in (data.get("measured") or {}).items()},
        )

    @classmethod
    def load_for(cls, index: str | os.PathLike[str]) -> GainScores:
        """The gain scores stored with the index folder ``index``.

        Raises:
            ConfigError: the folder has none (with the command that makes them).
        """
        path = Path(index) / GAIN_FILE
        if not path.is_file():
            raise ConfigError(
                f"{index}: no gain scores with this index ({GAIN_FILE}); strategy gain needs them. Compute them "
                f"with `icl index gain --pool POOL --index {index} --model MODEL` (see --limit to cap the cost)."
            )
        return cls.load(path)
