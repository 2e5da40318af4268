"""Shared pieces of the CLI: consoles, progress bars and the engine options every predicting command takes."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from icl_toolkit.errors import ConfigError
from icl_toolkit.progress import progress_bar, stderr_console

__all__ = ["console", "err_console", "progress_bar", "BackendName", "DType", "engine_options", "BackendOpt", "DeviceOpt",
           "BatchSizeOpt", "DTypeOpt", "GpuMemoryOpt", "TensorParallelOpt", "UrlOpt", "ServedModelOpt",
           "MaxContextOpt", "ModelOpt"]

console = Console(soft_wrap=True)
err_console = stderr_console


class BackendName(str, Enum):
    hf = "hf"
    vllm = "vllm"
    openai = "openai"
    auto = "auto"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def engine_options(**flags: Any) -> Any:
    """:class:`~icl_toolkit.backends.options.EngineOptions` from CLI flags (unset flags stay unset)."""
    from icl_toolkit.backends.options import EngineOptions

    given = {k: (v.value if isinstance(v, Enum) else v) for k, v in flags.items() if v is not None}
    try:
        return EngineOptions(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{str(err['loc'][-1]).replace('_', '-')}: {err['msg']} (got {err.get('input')!r}).") from None


# The engine flags of every predicting command (icl predict, icl serve), defined once.
ModelOpt = Annotated[str, typer.Option(help="'default' (embedded SmolLM2-135M-Instruct), a checkpoint or LoRA adapter folder, or a cached hub name.")]
BackendOpt = Annotated[BackendName, typer.Option(help="hf (transformers), vllm (offline engine), openai (a running vllm serve at --url), or auto (vllm with a GPU, else hf).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="torch device of the hf backend (default cpu).")]
BatchSizeOpt = Annotated[Optional[int], typer.Option(min=1, help="hf: prompts per forward pass (default: 1 on CPU, 8 on GPU); openai: sequences per request.")]
DTypeOpt = Annotated[DType, typer.Option(help="Weights dtype (auto: float32 on hf, the model's own on vllm).")]
GpuMemoryOpt = Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="vllm: share of GPU memory for the engine (default 0.85; on the CPU build a share of host memory, default: a fixed 2 GiB KV cache).")]
TensorParallelOpt = Annotated[int, typer.Option(min=1, help="vllm: GPUs to shard the model over.")]
UrlOpt = Annotated[Optional[str], typer.Option(help="openai: the server's base URL, e.g. http://127.0.0.1:8000/v1.")]
ServedModelOpt = Annotated[Optional[str], typer.Option(help="openai: the model's name on the server (default: its only one).")]
MaxContextOpt = Annotated[Optional[int], typer.Option("--max-context", "--max-model-len", help="Context limit of prompts and engine (default: the model's).")]
