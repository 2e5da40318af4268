"""Shared pieces of the benchmark scripts: what machine a result came from, and CSV writing."""

from __future__ import annotations

import csv
import importlib.metadata as md
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icl_toolkit.core import hardware

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    """The CPU model as the kernel reports it (``platform.processor()`` is often empty on Linux)."""
    return hardware.cpu_name()


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
    bf16 = "native bf16" if hardware.cpu_bf16() else "no native bf16"
    hw = f"{cpu_name()} ({bf16}), {os.cpu_count()} cores" + (f", GPU {gpu}" if gpu else ", no GPU")
    return f"{hw}; Python {platform.python_version()}; " + ", ".join(versions)


def demo_cohort(n_test: int | None = None, *, quick: bool = False) -> tuple[list, list]:
    """``(pool, test)`` of the `make demo` / `make paper` cohort: 2,000 synthetic patients (seed 1), splits
    70/10/20; the pool is the train split, ``test`` the first ``n_test`` of the test split. ``quick``: a
    300-patient cohort, and a test set of ``n_test`` patients with both outcomes (half cases)."""
    from icl_toolkit.data.synth import SynthConfig, assign_splits, generate_cohort, parse_split

    patients = generate_cohort(SynthConfig(n=300 if quick else 2000, seed=1))
    names = assign_splits([p.label for p in patients], parse_split("train=0.7,val=0.1,test=0.2"), 0)
    pool = [p for p, s in zip(patients, names) if s == "train"]
    test = [p for p, s in zip(patients, names) if s == "test"]
    if quick and n_test is not None:
        half = n_test // 2
        return pool, [p for p in test if p.label == 1][:half] + [p for p in test if p.label == 0][:n_test - half]
    return pool, test[:n_test]


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` to ``path``, creating its folder; the columns are every key in order of first appearance (a
    row without one leaves it empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def in_child(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process (so each arm's memory and imports are its own)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)
