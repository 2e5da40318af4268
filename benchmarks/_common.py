"""Shared pieces of the benchmark scripts: what machine a result came from, and CSV writing."""

from __future__ import annotations

import csv
import importlib.metadata as md
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    """The CPU model as the kernel reports it (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """The first visible CUDA GPU, or ``None``."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except Exception:  # noqa: BLE001 - no torch or a broken driver: no GPU to report
        return None
    return None


def machine() -> str:
    """One line naming the hardware and the library versions a result depends on."""
    versions = []
    for pkg in ("torch", "transformers", "vllm", "faiss-cpu"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            continue
    gpu = gpu_name()
    hw = f"{cpu_name()}, {os.cpu_count()} cores" + (f", GPU {gpu}" if gpu else ", no GPU")
    return f"{hw}; Python {platform.python_version()}; " + ", ".join(versions)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys) to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
