"""Shared pieces of the CLI: consoles, progress bars and the engine options every predicting command takes."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from icl_toolkit.errors import ConfigError
from icl_toolkit.progress import progress_bar, stderr_console

__all__ = ["console", "err_console", "progress_bar", "BackendName", "DType", "engine_options"]

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
