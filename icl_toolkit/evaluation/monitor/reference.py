"""What a served predictor's log is compared with: its demonstration pool, summarised once when the service loads.

``icl serve --monitor-dir`` writes ``reference.json`` there (:func:`pool_reference`):

- ``rows``: pool patients as the monitor log records patients (:func:`~.log.patient_row`: inputs, sex, age band,
  groups, events per vocabulary, common codes), without ids; at most ``max_rows``, sampled with a fixed seed;
- ``code_patients``: how many pool patients have each code that is logged by name, and ``patients``, the pool's
  size: the code-mix test compares each code's share of window patients with its share of the pool;
- ``prevalence``: the pool's share of positive outcomes;
- ``neighbours``: for a sample of pool patients sent through the server's own retriever (the same settings, the
  same leakage guards: a patient never retrieves itself), the mean similarity of the demos they get and the share
  of positive outcomes among them: what a query from the pool's own population gets, against which the served
  queries' ``demo_similarity`` and ``demo_vote`` are read.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from icl_toolkit.data.cohort import Patient
from icl_toolkit.evaluation.monitor.log import MIN_CODE_PATIENTS, code_counts, demo_signals, patient_row

__all__ = ["pool_reference"]


def pool_reference(
    pool: Sequence[Patient],
    retrieve: Callable[[list[Patient]], Sequence[Any]] | None = None,
    *,
    max_rows: int = 2000,
    neighbour_sample: int = 300,
    min_code_patients: int = MIN_CODE_PATIENTS,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference summary of a demonstration pool (JSON-ready).

    Args:
        pool: the demonstration pool.
        retrieve: the server's retrieval for a list of patients (``Predictor.retrieve``): each result's ``hits`` have
            ``score`` and ``label``. Without it, or with k=0, ``neighbours`` is empty.
        max_rows: pool rows kept (a seeded sample when the pool is larger).
        neighbour_sample: pool patients sent through ``retrieve``.
        min_code_patients: codes with at least this many pool patients are logged by name.
        seed: the sampling seed.
    """
    pool = list(pool)
    counts = code_counts(pool)
    rng = random.Random(seed)
    kept = pool if len(pool) <= max_rows else rng.sample(pool, max_rows)
    labelled = [p.label for p in pool if p.label is not None]
    neighbours: list[dict[str, float | None]] = []
    if retrieve is not None and pool:
        sample = pool if len(pool) <= neighbour_sample else rng.sample(pool, neighbour_sample)
        for r in retrieve(sample):
            if r.hits:
                neighbours.append(demo_signals([{"label": h.label, "score": h.score} for h in r.hits]))
    return {
        "kind": "demonstration pool",
        "patients": len(pool),
        "prevalence": sum(labelled) / len(labelled) if labelled else None,
        "min_code_patients": min_code_patients,
        "code_patients": {c: n for c, n in sorted(counts.items()) if n >= min_code_patients},
        "rows": [patient_row(p, counts, min_code_patients) for p in kept],
        "neighbours": neighbours,
    }
