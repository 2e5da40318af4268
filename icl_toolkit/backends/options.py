"""Engine options shared by every predicting command, and the one place that turns them into a backend.

``icl predict`` flags, ``icl compare``'s ``[engine]`` table and the library all
fill the same :class:`EngineOptions`; :func:`open_backend` checks that each set
option means something to the chosen backend (a GPU memory share given to the
transformers backend is an error, not silently ignored) and builds it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.backends import Backend, make_backend, resolve_backend_name
from icl_toolkit.errors import ConfigError

__all__ = ["EngineOptions", "open_backend", "backend_kwargs"]

BackendChoice = Literal["hf", "vllm", "openai", "auto"]


class EngineOptions(BaseModel):
    """Which backend runs the model, and the engine settings that matter (validated, unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendChoice = "hf"
    """``hf`` (transformers), ``vllm`` (offline engine), ``openai`` (a running ``vllm serve``) or ``auto``
    (vLLM when it is importable and a GPU is visible, transformers otherwise)."""
    device: str | None = None
    """torch device of the hf backend (default ``cpu``)."""
    batch_size: int | None = Field(None, ge=1)
    """hf: prompts per scoring pass (default 1 on CPU, 8 on GPU); openai: sequences per HTTP request."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and activations (``auto``: float32 on hf, the model's own on vLLM)."""
    max_model_len: int | None = Field(None, ge=16)
    """Context limit in tokens (default: the model's)."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """vllm: share of GPU memory the engine may take (default 0.85; on the CPU build a share of host memory,
    counting everything the process holds; unset there means a fixed 2 GiB KV cache)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """vllm: GPUs to shard the model over."""
    max_lora_rank: int = Field(0, ge=0, le=512)
    """vllm: start the engine with LoRA up to this rank (0: only when the model is an adapter)."""
    url: str | None = None
    """openai: base URL of the server, e.g. ``http://127.0.0.1:8000/v1``."""
    served_model: str | None = None
    """openai: model name on the server (default: the only one it serves)."""


_ONLY: dict[str, set[str]] = {
    "hf": {"device", "batch_size", "dtype", "max_model_len"},
    "vllm": {"dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "max_lora_rank"},
    "openai": {"batch_size", "max_model_len", "url", "served_model"},
}


def backend_kwargs(name: str, options: EngineOptions) -> dict[str, Any]:
    """The constructor arguments of backend ``name`` from ``options``.

    Raises:
        ConfigError: an option was set that backend ``name`` does not use, or a required one is missing.
    """
    set_here = {f for f, info in EngineOptions.model_fields.items()
                if f != "backend" and getattr(options, f) != info.default}
    unused = sorted(set_here - _ONLY[name])
    if unused:
        users = {f: sorted(b for b, fs in _ONLY.items() if f in fs) for f in unused}
        said = "; ".join(f"{f.replace('_', '-')} is for {' and '.join(users[f]) or 'no backend'}" for f in unused)
        raise ConfigError(f"Engine option not used by the {name} backend: {said}. Drop it or choose another backend.")
    o = options
    if name == "hf":
        device = o.device or "cpu"
        kw: dict[str, Any] = {"device": device, "dtype": "float32" if o.dtype == "auto" else o.dtype,
                              "batch_size": o.batch_size or (1 if device == "cpu" else 8)}
        if o.max_model_len:
            kw["max_context"] = o.max_model_len
        return kw
    if name == "vllm":
        return {"dtype": o.dtype, "max_model_len": o.max_model_len, "gpu_memory_utilization": o.gpu_memory_utilization,
                "tensor_parallel_size": o.tensor_parallel_size, "max_lora_rank": o.max_lora_rank}
    if not o.url:
        raise ConfigError("The openai backend needs the server's URL: --url http://HOST:PORT/v1 (start the server "
                          "with: vllm serve MODEL).")
    kw = {"url": o.url, "served_model": o.served_model, "max_context": o.max_model_len}
    if o.batch_size:
        kw["batch_size"] = o.batch_size
    return kw


def open_backend(model: str, options: EngineOptions | None = None, *, progress: bool = True) -> Backend:
    """The backend for ``model`` as ``options`` say (``auto`` resolved here)."""
    options = options or EngineOptions()
    name = resolve_backend_name(options.backend)
    return make_backend(name, model=model, progress=progress, **backend_kwargs(name, options))
