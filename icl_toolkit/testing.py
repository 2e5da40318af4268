"""Small real stand-ins for tests and quick experiments (no downloads, built in code).

- :func:`tiny_llama`: a randomly initialised Llama of about 3M parameters with
  the SmolLM2 tokenizer; it loads in well under a second and exercises the same
  code paths as the real model (chat template, padding, ``logits_to_keep``).
- :class:`HashEmbedder`: a deterministic bag-of-words embedder with the
  ``encode`` interface of sentence-transformers, for retrieval tests that should
  not depend on a neural embedder.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["tiny_llama", "tiny_backend", "HashEmbedder"]


def tiny_llama(seed: int = 0, *, tokenizer: Any = None, hidden_size: int = 64, layers: int = 2) -> tuple[Any, Any]:
    """A random Llama with the SmolLM2 tokenizer: ``(model, tokenizer)``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from icl_toolkit.models import load_tokenizer

    tok = tokenizer if tokenizer is not None else load_tokenizer("default")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger-than-default weights so that outputs differ visibly between prompts.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 0.5)
    return model.eval(), tok


def tiny_backend(seed: int = 0, **kwargs: Any) -> Any:
    """An :class:`~icl_toolkit.backends.hf.HFBackend` over :func:`tiny_llama`."""
    from icl_toolkit.backends.hf import HFBackend

    model, tok = tiny_llama(seed)
    return HFBackend.from_objects(model, tok, model_id=f"tiny-llama-{seed}", **kwargs)


class HashEmbedder:
    """Deterministic bag-of-words vectors (feature hashing), normalised, ``dim`` wide."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts: str | Sequence[str], batch_size: int = 32, normalize_embeddings: bool = True,
               show_progress_bar: bool = False, convert_to_numpy: bool = True) -> np.ndarray:
        single = isinstance(texts, str)
        rows = [texts] if single else list(texts)
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        for r, text in enumerate(rows):
            for word in re.findall(r"[a-z0-9.]+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[r, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms == 0, 1.0, norms)
        return out[0] if single else out
