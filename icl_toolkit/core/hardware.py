"""What the processor can do, detected at run time (never assumed), and the dtype ``auto`` means on it.

Machines that look alike differ: one 2-core cloud machine has an Intel Xeon with
AVX-512 BF16 (or AMX), another an AMD EPYC with or without it. Where the CPU
has native bf16 dot products, PyTorch's oneDNN kernels run a bf16 matrix
product several times faster than fp32 (4.4x measured on an AMD EPYC with
``avx512_bf16``); where it has none, bf16 is emulated and slower than fp32.
So ``dtype="auto"`` resolves here, per machine:

* CUDA: bfloat16 where the GPU supports it, else float16;
* CPU with native bf16 (``avx512_bf16``, ``amx_bf16`` or Arm ``bf16``): bfloat16;
* any other CPU: float32.

``ICL_CPU_BF16=0`` (or ``1``) overrides the CPU detection, e.g. to reproduce an
fp32 result on a bf16 machine without touching every command.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

__all__ = ["cpu_bf16", "cpu_flags", "cpu_name", "resolve_dtype", "describe"]

_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first CPU's ``key: value`` lines of /proc/cpuinfo (empty where it is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def cpu_flags() -> frozenset[str]:
    """The feature flags the kernel reports for the first CPU (x86 ``flags``, Arm ``Features``)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_name() -> str:
    """The processor's model name (``platform.processor()`` where /proc/cpuinfo says nothing)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (so a bf16 model runs faster than fp32 on it).

    ``ICL_CPU_BF16`` set to ``0``/``1`` overrides the detection. Otherwise PyTorch's
    own check is asked first (it reads CPUID), then the kernel's flag list.
    """
    forced = os.environ.get("ICL_CPU_BF16", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    return _detected_bf16()


@functools.lru_cache(maxsize=1)
def _detected_bf16() -> bool:
    try:
        import torch

        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        if check is not None and check():
            return True
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        if amx is not None and amx():
            return True
    except (ImportError, RuntimeError):
        pass
    return any(flag in cpu_flags() for flag in _BF16_FLAGS)


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """The concrete dtype (``float32``, ``bfloat16`` or ``float16``) that ``dtype`` means on ``device``."""
    if dtype != "auto":
        return dtype
    if str(device).startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
    if str(device) == "cpu":
        return "bfloat16" if cpu_bf16() else "float32"
    return "float32"


def describe() -> str:
    """One line for logs and benchmark results: the processor, its core count and whether it has native bf16."""
    return f"{cpu_name()}, {os.cpu_count()} cores, {'native bf16' if cpu_bf16() else 'no native bf16'}"
