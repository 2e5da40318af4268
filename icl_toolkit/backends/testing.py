"""Small real stand-ins for tests and quick experiments (no downloads, built in code).

- :func:`tiny_llama`: a randomly initialised Llama of about 3M parameters with
  the SmolLM2 tokenizer; it loads in well under a second and exercises the same
  code paths as the real model (chat template, padding, ``logits_to_keep``).

The hashing embedder for retrieval tests is
:class:`~icl_toolkit.retrieval.embedder.HashEmbedder`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tiny_llama", "tiny_backend"]


def tiny_llama(seed: int = 0, *, tokenizer: Any = None, hidden_size: int = 64, layers: int = 2) -> tuple[Any, Any]:
    """A random Llama with the SmolLM2 tokenizer: ``(model, tokenizer)``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from icl_toolkit.core.models import load_tokenizer

    tok = tokenizer if tokenizer is not None else load_tokenizer("default")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
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
