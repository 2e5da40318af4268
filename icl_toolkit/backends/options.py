"""Engine options shared by every predicting command, and the one place that turns them into a backend.

``icl predict`` flags, ``icl compare``'s ``[engine]`` table, ``icl serve`` and
the library all fill the same :class:`EngineOptions`. An option left unset
(``None``) is not passed on, so each backend's constructor supplies its own
default; an option that is set but that the chosen backend does not declare in
its ``engine_options`` is refused with a one-line error naming the backends
that do take it (a GPU memory share given to the transformers backend is an
error, not silently ignored). The option names are the constructor's argument
names, so ``--max-context`` is ``max_context`` from the flag to the backend.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.backends import BACKENDS, Backend, get_backend_class, resolve_backend_name
from icl_toolkit.core.errors import ConfigError

__all__ = ["EngineOptions", "open_backend", "backend_kwargs"]

BackendChoice = Literal["hf", "vllm", "openai", "auto"]
DTypeChoice = Literal["auto", "float32", "bfloat16", "float16"]


class EngineOptions(BaseModel):
    """Which backend runs the model, and the engine settings given for it (validated, unknown fields rejected).

    Every setting defaults to ``None``: not given, so the backend's own default applies.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    backend: BackendChoice = "hf"
    """``hf`` (transformers), ``vllm`` (offline engine), ``openai`` (a running ``vllm serve``) or ``auto``
    (vLLM when it is importable and a GPU is visible, transformers otherwise)."""
    device: str | None = None
    """hf: torch device (default ``cpu``)."""
    batch_size: int | None = Field(None, ge=1)
    """hf: prompts per scoring pass (default 1 on CPU, 8 on GPU); openai: sequences per HTTP request (32)."""
    dtype: DTypeChoice | None = None
    """hf, vllm: weights and activations (``auto``: on hf bfloat16 where the CPU or GPU has native bf16, else
    float32, see :mod:`icl_toolkit.core.hardware`; on vLLM the model's own)."""
    max_context: int | None = Field(None, ge=16)
    """Every backend: context limit in tokens (default: the model's; vLLM's ``max_model_len``)."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """vllm: share of GPU memory the engine may take (default 0.85; on the CPU build a share of host memory,
    counting everything the process holds; unset there means a fixed 2 GiB KV cache)."""
    tensor_parallel_size: int | None = Field(None, ge=1)
    """vllm: GPUs to shard the model over (default 1)."""
    max_lora_rank: int | None = Field(None, ge=0, le=512)
    """vllm: start the engine with LoRA up to this rank (default: only when the model is an adapter)."""
    url: str | None = None
    """openai: base URL of the server, e.g. ``http://127.0.0.1:8000/v1`` (required there)."""
    served_model: str | None = None
    """openai: model name on the server (default: the only one it serves)."""

    def given(self) -> dict[str, Any]:
        """The settings that were given (not ``None``), without ``backend``."""
        return {k: v for k, v in self.model_dump(exclude={"backend"}).items() if v is not None}


def _takers(option: str) -> list[str]:
    """Names of the registered backends that accept ``option``."""
    out = []
    for name in sorted(BACKENDS):
        try:
            cls = get_backend_class(name)
        except ImportError:  # a backend module whose own imports are missing still names what it takes below
            continue
        if option in getattr(cls, "engine_options", ()):
            out.append(name)
    return out


def backend_kwargs(name: str, options: EngineOptions) -> dict[str, Any]:
    """The constructor arguments of backend ``name`` from ``options`` (only the settings given).

    Raises:
        ConfigError: a setting was given that backend ``name`` does not declare in its ``engine_options``.
    """
    accepted = set(getattr(get_backend_class(name), "engine_options", ()))
    given = options.given()
    refused = sorted(set(given) - accepted)
    if refused:
        said = "; ".join(f"{f.replace('_', '-')} is for {' and '.join(_takers(f)) or 'no backend'}" for f in refused)
        raise ConfigError(f"Engine option not used by the {name} backend: {said}. Drop it or choose another backend.")
    return given


def open_backend(model: str, options: EngineOptions | None = None, *, progress: bool = True) -> Backend:
    """The backend for ``model`` as ``options`` say (``auto`` resolved here): the model is loaded now.

    Args:
        model: ``"default"`` (the embedded SmolLM2-135M-Instruct), a checkpoint or LoRA adapter folder from
            ``icl finetune``, or a cached hub name.
        options: the backend and its engine settings (default: transformers on the CPU).
        progress: show progress bars while scoring and generating.

    Returns:
        The backend (``score`` and ``generate``, see :mod:`icl_toolkit.backends`).

    Raises:
        ConfigError: an engine setting the chosen backend does not take, naming the backends that do.
        ModelNotFoundError: a model that is neither embedded, a folder, nor in the local hub cache.
    """
    options = options or EngineOptions()
    name = resolve_backend_name(options.backend)
    return get_backend_class(name)(model=model, progress=progress, **backend_kwargs(name, options))
