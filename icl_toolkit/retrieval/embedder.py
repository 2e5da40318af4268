"""Profile embeddings: each patient's condensed profile (pre-index events only, under the embedder's 256-token
limit) embedded with a sentence-transformers model and normalised, so inner products are cosines.

:class:`HashEmbedder` is a deterministic bag-of-words stand-in with the same ``encode`` interface, for tests and
quick experiments that should not depend on a neural embedder.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from icl_toolkit.core.progress import progress_bar
from icl_toolkit.data.cohort import Patient
from icl_toolkit.data.serialize import condensed_profile, token_counter

__all__ = ["ProfileEmbedder", "HashEmbedder"]


class ProfileEmbedder:
    """Embeds patients' condensed profiles; normalised float32 vectors.

    Args:
        embedder: ``"default"`` (embedded all-MiniLM-L6-v2), a local folder or a
            cached hub name; ignored when ``model`` is given.
        model: an object with sentence-transformers' ``encode`` (e.g.
            :class:`~icl_toolkit.backends.testing.HashEmbedder`), used as is.
        model_id: the id recorded in index metadata when ``model`` is given.
        batch_size: texts per encoder batch.
    """

    def __init__(
        self,
        embedder: str = "default",
        *,
        model: Any = None,
        model_id: str | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        from icl_toolkit.core.models import embedder_id, load_embedder, load_embedder_tokenizer

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

    def embed(
        self, patients: Sequence[Patient], *, progress: bool = True, desc: str = "embedding profiles"
    ) -> np.ndarray:
        """Normalised embeddings, shape ``[len(patients), dim]``, in input order."""
        out = np.zeros((len(patients), self.dim), dtype=np.float32)
        step = max(self.batch_size, 1)
        texts = self.profiles(patients)
        # longest first over the whole set, so each batch pads to similar lengths
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with progress_bar(desc, len(patients), progress and len(patients) > step) as advance:
            for start in range(0, len(order), step):
                rows = order[start : start + step]
                vecs = self.model.encode(
                    [texts[i] for i in rows],
                    batch_size=step,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )
                out[rows] = np.asarray(vecs, dtype=np.float32)
                advance(len(rows))
        return out


class HashEmbedder:
    """Deterministic bag-of-words vectors (feature hashing), normalised, ``dim`` wide."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
    ) -> np.ndarray:
        single = isinstance(texts, str)
        rows: list[str] = [texts] if isinstance(texts, str) else list(texts)
        out: np.ndarray = np.zeros((len(rows), self.dim), dtype=np.float32)
        for r, text in enumerate(rows):
            for word in re.findall(r"[a-z0-9.]+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[r, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms == 0, 1.0, norms)
        return out[0] if single else out
