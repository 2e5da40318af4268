"""Predictions in the meds-evaluation schema: ``subject_id, prediction_time, boolean_value,
predicted_boolean_value, predicted_boolean_probability`` (a MEDS label file plus the two prediction columns).

``icl predict --format meds`` writes this parquet beside its JSONL. A record's subject and prediction time come
from ``icl data from-meds`` (``metadata.subject_id``, ``metadata.prediction_time``); a record with a whole-number
id and no such metadata uses its id and its index date's midnight. meds-evaluation needs the true label, so
unlabelled records are left out of the file (and counted).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient

__all__ = ["PREDICTION_COLUMNS", "PREDICTION_SCHEMA", "meds_key", "meds_predictions_path", "write_meds_predictions"]

PREDICTION_SCHEMA = pa.schema(
    [
        ("subject_id", pa.int64()),
        ("prediction_time", pa.timestamp("us")),
        ("boolean_value", pa.bool_()),
        ("predicted_boolean_value", pa.bool_()),
        ("predicted_boolean_probability", pa.float32()),
    ]
)
PREDICTION_COLUMNS = tuple(PREDICTION_SCHEMA.names)


def meds_key(p: Patient) -> tuple[int, dt.datetime]:
    """(subject_id, prediction_time) of a record, for MEDS outputs.

    Raises:
        ConfigError: the record has no MEDS subject (not imported from MEDS, and its id is not a whole number).
    """
    meta = p.metadata or {}
    sid = meta.get("subject_id")
    if sid is None and p.patient_id.isdigit():
        sid = int(p.patient_id)
    if not isinstance(sid, int) or isinstance(sid, bool):
        raise ConfigError(
            f"patient {p.patient_id!r}: no MEDS subject id (metadata.subject_id) and not a "
            "whole-number id; MEDS outputs need records read with `icl data from-meds` (or ids that "
            "are whole numbers)."
        )
    raw = meta.get("prediction_time")
    if isinstance(raw, str):
        try:
            return sid, dt.datetime.fromisoformat(raw)
        except ValueError:
            pass
    d = p.index_date
    return sid, dt.datetime(d.year, d.month, d.day)


def meds_predictions_path(out: str | os.PathLike[str]) -> Path:
    """``preds.jsonl`` -> ``preds.meds.parquet`` (beside it)."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".meds.parquet")


def write_meds_predictions(
    records: Iterable[Mapping[str, Any]], patients: Iterable[Patient], path: str | os.PathLike[str]
) -> tuple[int, int]:
    """Write prediction records (``icl predict``'s JSONL records) as a meds-evaluation parquet file.

    Returns:
        (rows written, unlabelled records left out).
    """
    by_id = {p.patient_id: p for p in patients}
    rows: list[tuple[int, dt.datetime, bool, bool, float]] = []
    skipped = 0
    for r in records:
        p = by_id.get(r["patient_id"])
        if p is None:
            raise ConfigError(
                f"prediction for {r['patient_id']!r} has no record in the cohort; write MEDS "
                "predictions from the cohort that was predicted."
            )
        if r.get("label") is None:
            skipped += 1
            continue
        sid, t = meds_key(p)
        rows.append((sid, t, bool(r["label"]), bool(r["predicted"]), float(r["probability"])))
    table = pa.Table.from_arrays(
        [pa.array([row[i] for row in rows], type=f.type) for i, f in enumerate(PREDICTION_SCHEMA)],
        schema=PREDICTION_SCHEMA,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return len(rows), skipped
