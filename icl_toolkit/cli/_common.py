"""Shared pieces of the CLI: consoles, progress bars and the engine options every predicting command takes."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from icl_toolkit.backends.options import BackendChoice, DTypeChoice
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.retrieval.config import RetrieverKind
from icl_toolkit.core.progress import progress_bar, stderr_console

__all__ = ["console", "err_console", "progress_bar", "flag_error", "engine_options", "spec_from_flags",
           "with_engine_flags", "ENGINE_FLAGS", "ModelOpt", "with_retriever_flags", "retriever_options"]


def _stdout_console() -> Console:
    """stdout: the terminal's width on a terminal (or $COLUMNS when set); 150 columns when stdout is a log or a
    pipe, where Rich would otherwise assume 80 and squeeze every column of a wide table."""
    out = Console(soft_wrap=True)
    return out if out.is_terminal or os.environ.get("COLUMNS") else Console(soft_wrap=True, width=150)


console = _stdout_console()
err_console = stderr_console


def flag_error(exc: ValidationError, flags: dict[str, str] | None = None) -> ConfigError:
    """A one-line error naming the command-line flag behind a config field that failed validation.

    The flag is ``--field-name``, or ``flags[field]`` where a flag is named otherwise.
    """
    err = exc.errors()[0]
    name = next((str(x) for x in reversed(err["loc"]) if isinstance(x, str)), "-")
    flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
    return ConfigError(f"{flag}: {err['msg']} (got {err.get('input')!r}).")


def engine_options(**flags: Any) -> Any:
    """:class:`~icl_toolkit.backends.options.EngineOptions` from CLI flags (unset flags stay unset)."""
    from icl_toolkit.backends.options import EngineOptions

    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return EngineOptions(**given)
    except ValidationError as exc:
        raise flag_error(exc) from None


def spec_from_flags(model: str, **flags: Any) -> Any:
    """The validated :class:`~icl_toolkit.inference.config.PredictConfig` of these flags for ``model`` (a bad value is the
    flag's one-line error)."""
    from icl_toolkit.inference.config import PredictConfig

    try:
        return PredictConfig.from_options(**flags).for_model(model)
    except ValidationError as exc:
        raise flag_error(exc) from None


ModelOpt = Annotated[str, typer.Option(help="'default' (embedded SmolLM2-135M-Instruct), a checkpoint or LoRA adapter folder, or a cached hub name.")]
BackendOpt = Annotated[BackendChoice, typer.Option(help="hf (transformers), vllm (offline engine), openai (a running vllm serve at --url), or auto (vllm with a GPU, else hf).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="torch device of the hf backend (default cpu).")]
BatchSizeOpt = Annotated[Optional[int], typer.Option(min=1, help="hf: prompts per forward pass (default: 1 on CPU, 8 on GPU); openai: sequences per request.")]
DTypeOpt = Annotated[Optional[DTypeChoice], typer.Option(help="hf, vllm: weights dtype (auto: on hf bfloat16 where the CPU/GPU has native bf16, else float32; the model's own on vllm). --dtype float32 opts out of bf16.")]
GpuMemoryOpt = Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="vllm: share of GPU memory for the engine (default 0.85; on the CPU build a share of host memory, default: a fixed 2 GiB KV cache).")]
TensorParallelOpt = Annotated[Optional[int], typer.Option(min=1, help="vllm: GPUs to shard the model over (default 1).")]
UrlOpt = Annotated[Optional[str], typer.Option(help="openai: the server's base URL, e.g. http://127.0.0.1:8000/v1.")]
ServedModelOpt = Annotated[Optional[str], typer.Option(help="openai: the model's name on the server (default: its only one).")]
MaxContextOpt = Annotated[Optional[int], typer.Option(help="Context limit of prompts and engine, in tokens (vLLM's max_model_len; default: the model's).")]

# The engine flags of every predicting command (icl predict, icl serve, icl rationales generate), defined once:
# (name, annotation, default). @with_engine_flags adds them to a command.
ENGINE_FLAGS: tuple[tuple[str, Any, Any], ...] = (
    ("backend", BackendOpt, "hf"), ("device", DeviceOpt, None), ("batch_size", BatchSizeOpt, None),
    ("dtype", DTypeOpt, None), ("max_context", MaxContextOpt, None),
    ("gpu_memory_utilization", GpuMemoryOpt, None), ("tensor_parallel_size", TensorParallelOpt, None),
    ("url", UrlOpt, None), ("served_model", ServedModelOpt, None),
)


def _with_flags(param: str, flags: tuple[tuple[str, Any, Any], ...],
                build: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator giving a command a group of flags (``(name, annotation, default)``): Typer sees them as the
    command's own options, and the command receives ``build(**flags)`` as one argument named ``param``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(command, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != param]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
                 for name, ann, default in flags]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name, _, _ in flags}
            return command(**{param: build(**given)}, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # Typer must read the signature above, not the command's own
        return wrapper

    return decorate


with_engine_flags = _with_flags("engine", ENGINE_FLAGS, engine_options)
"""Give a command the engine flags (``--backend``, ``--device``, ``--dtype``, ``--max-context``, ...); it
receives them as one validated :class:`~icl_toolkit.backends.options.EngineOptions` argument named ``engine``."""


def retriever_options(retriever: str | None = None, prognostic_weight: float | None = None,
                      hybrid_weights: str | None = None) -> dict[str, Any]:
    """The retriever flags as spec options (unset flags are left out, so the spec's defaults apply)."""
    out: dict[str, Any] = {"retriever": retriever, "prognostic_weight": prognostic_weight}
    if hybrid_weights is not None:
        try:
            weights = tuple(float(x) for x in hybrid_weights.split(","))
        except ValueError:
            weights = ()
        if len(weights) != 3:
            raise ConfigError(f"--hybrid-weights: expected three numbers DENSE,SPARSE,STRUCTURED such as 0.4,0.4,0.2 "
                              f"(got {hybrid_weights!r}).")
        out["hybrid_weights"] = weights
    return {k: v for k, v in out.items() if v is not None}


RetrieverOpt = Annotated[Optional[RetrieverKind], typer.Option(help="What 'similar' means: dense (MiniLM profile), sparse (TF-IDF over codes), hybrid (dense + sparse + age/sex/history) or prognostic (similar learned risk, then similar findings; the default).")]
RETRIEVER_FLAGS: tuple[tuple[str, Any, Any], ...] = (
    ("retriever", RetrieverOpt, None),
    ("prognostic_weight", Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="prognostic: share of the similarity that is closeness in learned risk (default 0.5).")], None),
    ("hybrid_weights", Annotated[Optional[str], typer.Option(help="hybrid: weights DENSE,SPARSE,STRUCTURED (default 0.4,0.4,0.2).")], None),
)

with_retriever_flags = _with_flags("retriever_options", RETRIEVER_FLAGS, retriever_options)
"""Give a command the retriever flags; it receives them as a dict of spec options named ``retriever_options``."""
