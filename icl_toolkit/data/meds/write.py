"""Cohort records -> a MEDS dataset and a label file (``icl data to-meds``).

Each subject gets, in time order: a ``GENDER//F|M|U`` static row (null time) and one ``GROUP//ATTR//VALUE`` static
row per group attribute (``Patient.groups``), ``MEDS_BIRTH`` at the birth date,
its events as ``SYSTEM//CODE`` at midnight of their date (``numeric_value`` or ``text_value``; the unit in a
``unit`` column, declared as a code modifier), ``ICL//INDEX`` at each record's index date, and for a case whose
record holds no outcome code after the index date, the onset as ``ICD10CM//F03.90`` (unspecified dementia) at the
outcome date, so that an ACES task can find it. The label file has one row per labelled record:
``subject_id, prediction_time`` (the index date's midnight, or the prediction time the record came from MEDS
with) and ``boolean_value``.

Records that share a subject (``metadata.subject_id``, from ``icl data from-meds``) are written as one subject with
the union of their events; other records get subject ids from their own ids when every id is a whole number, else
1, 2, ... in file order. ``metadata/icl_records.parquet`` keeps each record's id, so ``from-meds`` gives the same
ids back. Every table is checked against the ``meds`` schemas before the folder is put in place.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient
from icl_toolkit.data.meds.codes import GROUP_PREFIX, INDEX_CODE, OutcomeMatcher, to_meds_code
from icl_toolkit.data.meds.read import RECORDS_FILE, SPLIT_NAMES, _meds
from icl_toolkit.data.omop.outcome import ADRD

__all__ = ["ONSET_CODE", "MedsExportSummary", "write_meds", "subject_key"]

ONSET_CODE = (
    "ICD10CM",
    "F03.90",
    "Unspecified dementia, unspecified severity, without behavioral disturbance, "
    "psychotic disturbance, mood disturbance, and anxiety",
)
"""The diagnosis written at a case's outcome date when its record holds no outcome code."""

_SPLIT_OUT = {v: k for k, v in SPLIT_NAMES.items()}
_DATA_SCHEMA = pa.schema(
    [
        ("subject_id", pa.int64()),
        ("time", pa.timestamp("us")),
        ("code", pa.string()),
        ("numeric_value", pa.float32()),
        ("text_value", pa.large_string()),
        ("unit", pa.string()),
    ]
)


@dataclass
class MedsExportSummary:
    root: str
    labels: str
    subjects: int = 0
    records: int = 0
    label_rows: int = 0
    unlabelled_left_out: int = 0
    onset_rows_added: int = 0
    data_rows: int = 0
    shards: list[str] = field(default_factory=list)
    codes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def subject_key(p: Patient) -> str:
    """Which subject a record belongs to (:attr:`Patient.subject_id`)."""
    return p.subject_id


def _midnight(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day)


def _prediction_time(p: Patient) -> dt.datetime:
    raw = p.metadata.get("prediction_time") if p.metadata else None
    if isinstance(raw, str):
        try:
            t = dt.datetime.fromisoformat(raw)
            if t.date() == p.index_date:
                return t
        except ValueError:
            pass
    return _midnight(p.index_date)


def _subject_ids(keys: list[str]) -> dict[str, int]:
    if all(k.isdigit() and len(k) < 19 for k in keys):
        return {k: int(k) for k in keys}
    return {k: i for i, k in enumerate(keys, start=1)}


def write_meds(
    patients: Sequence[Patient],
    out: str | os.PathLike[str],
    *,
    dataset_name: str,
    dataset_version: str,
    task: str = "adrd_5y",
    labels_out: str | os.PathLike[str] | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> MedsExportSummary:
    """Write ``patients`` as a MEDS dataset at ``out`` and their labels as a MEDS label file.

    Args:
        patients: the records (read with :func:`~icl_toolkit.data.cohort.read_cohort`).
        out: the MEDS root to create; it is built beside, checked, then moved in place.
        dataset_name / dataset_version: for ``metadata/dataset.json`` (the version: the cohort's content hash).
        task: the label file's name (``<out>/labels/<task>.parquet`` unless ``labels_out`` is given).
        shard_size: subjects per data shard.
        overwrite: replace an existing non-empty ``out``.

    Raises:
        ConfigError: ``out`` exists and is not empty (without ``overwrite``); records of one subject disagree on
            birth date, sex or split.
    """
    from icl_toolkit.core import __version__

    meds = _meds()
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise ConfigError(f"{root}: exists and is not empty; choose another --out or pass --overwrite.")
    labels_path = Path(labels_out) if labels_out else root / "labels" / f"{task}.parquet"
    summary = MedsExportSummary(str(root), str(labels_path))

    groups: dict[str, list[Patient]] = {}
    for p in patients:
        groups.setdefault(subject_key(p), []).append(p)
    ids = _subject_ids(list(groups))
    for key, recs in groups.items():
        first = recs[0]
        for r in recs[1:]:
            for attr in ("birth_date", "sex", "split"):
                if getattr(r, attr) != getattr(first, attr):
                    raise ConfigError(
                        f"records {first.patient_id!r} and {r.patient_id!r} belong to subject {key} "
                        f"but disagree on {attr} ({getattr(first, attr)} vs {getattr(r, attr)}); "
                        "a MEDS subject has one."
                    )
    outcome = OutcomeMatcher(ADRD)
    names: dict[str, tuple[str, str | None]] = {}  # code -> (description, icl_kind)
    names["MEDS_BIRTH"] = ("Birth", None)
    names[INDEX_CODE] = ("Index date of an icl-toolkit cohort record (its prediction time)", None)
    label_rows: list[tuple[int, dt.datetime, bool]] = []
    record_rows: list[tuple[int, dt.datetime, str]] = []
    by_split: dict[str, list[list[tuple[Any, ...]]]] = {}

    for key, recs in groups.items():
        sid = ids[key]
        first = recs[0]
        rows: Counter[tuple[Any, ...]] = Counter()  # a row repeated within a record is kept repeated
        sex_code = f"GENDER//{first.sex}"
        names.setdefault(sex_code, ({"F": "Female", "M": "Male"}.get(first.sex, "Unknown sex"), None))
        static = [(sid, None, sex_code, None, None, None)]
        for attr, value in sorted(first.groups.items()):
            code = f"{GROUP_PREFIX}//{attr}//{value}"
            names.setdefault(code, (f"{attr}: {value}", None))
            static.append((sid, None, code, None, None, None))
        rows[(sid, _midnight(first.birth_date), "MEDS_BIRTH", None, None, None)] = 1
        for r in recs:
            pt = _prediction_time(r)
            own: Counter[tuple[Any, ...]] = Counter({(sid, _midnight(r.index_date), INDEX_CODE, None, None, None): 1})
            for e in r.events:
                code = to_meds_code(e.system, e.code)
                names.setdefault(code, (e.name, e.kind))
                num = float(e.value) if isinstance(e.value, (int, float)) and not isinstance(e.value, bool) else None
                txt = e.value if isinstance(e.value, str) else None
                own[(sid, _midnight(e.date), code, num, txt, e.unit if e.value is not None else None)] += 1
            if (
                r.label == 1
                and r.outcome_date is not None
                and not any(e.date > r.index_date and outcome(to_meds_code(e.system, e.code)) for e in r.events)
            ):
                code = to_meds_code(ONSET_CODE[0], ONSET_CODE[1])
                names.setdefault(code, (ONSET_CODE[2], "diagnosis"))
                own[(sid, _midnight(r.outcome_date), code, None, None, None)] = 1
            for row, n in own.items():  # records of one subject share their history: union, not sum
                if row[2] == to_meds_code(ONSET_CODE[0], ONSET_CODE[1]) and row not in rows:
                    summary.onset_rows_added += 1
                rows[row] = max(rows[row], n)
            summary.records += 1
            if r.label is None:
                summary.unlabelled_left_out += 1
            else:
                label_rows.append((sid, pt, bool(r.label)))
            record_rows.append((sid, pt, r.patient_id))
        # by time only: same-day rows keep the records' own order (a stable sort), which the import keeps too
        ordered = static + sorted(rows.elements(), key=lambda x: x[1])
        split = _SPLIT_OUT.get(first.split) if first.split else None
        by_split.setdefault(split or "", []).append(ordered)
        summary.subjects += 1
        if progress is not None:
            progress(len(recs))

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        for split, subjects in sorted(by_split.items()):
            folder = tmp / meds.data_subdirectory / split if split else tmp / meds.data_subdirectory
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(0, len(subjects), shard_size):
                chunk = [row for subj in subjects[k : k + shard_size] for row in subj]
                table = pa.Table.from_arrays(
                    [pa.array([r[i] for r in chunk], type=f.type) for i, f in enumerate(_DATA_SCHEMA)],
                    schema=_DATA_SCHEMA,
                )
                meds.DataSchema.validate(table)
                path = folder / f"{k // shard_size}.parquet"
                pq.write_table(table, path)
                summary.data_rows += table.num_rows
                summary.shards.append(str(path.relative_to(tmp)))
        (tmp / "metadata").mkdir(parents=True, exist_ok=True)
        codes = pa.table(
            {
                "code": pa.array(list(names), pa.string()),
                "description": pa.array([v[0] for v in names.values()], pa.string()),
                "parent_codes": pa.array([None] * len(names), pa.list_(pa.string())),
                "icl_kind": pa.array([v[1] for v in names.values()], pa.string()),
            }
        )
        meds.CodeMetadataSchema.validate(codes)
        pq.write_table(codes, tmp / meds.code_metadata_filepath)
        summary.codes = len(names)
        dataset = {
            "dataset_name": dataset_name,
            "dataset_version": dataset_version,
            "etl_name": "icl-toolkit",
            "etl_version": __version__,
            "meds_version": getattr(meds, "__version__", "0.4"),
            "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(),
            "code_modifier_columns": ["unit"],
        }
        meds.DatasetMetadataSchema.validate(dataset)
        (tmp / meds.dataset_metadata_filepath).write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
        split_rows = [(ids[k], _SPLIT_OUT[recs[0].split]) for k, recs in groups.items() if recs[0].split in _SPLIT_OUT]
        if split_rows:
            splits = pa.table(
                {
                    "subject_id": pa.array([r[0] for r in split_rows], pa.int64()),
                    "split": pa.array([r[1] for r in split_rows], pa.string()),
                }
            )
            meds.SubjectSplitSchema.validate(splits)
            pq.write_table(splits, tmp / meds.subject_splits_filepath)
        pq.write_table(
            pa.table(
                {
                    "subject_id": pa.array([r[0] for r in record_rows], pa.int64()),
                    "prediction_time": pa.array([r[1] for r in record_rows], pa.timestamp("us")),
                    "patient_id": pa.array([r[2] for r in record_rows], pa.string()),
                }
            ),
            tmp / RECORDS_FILE,
        )
        labels = pa.table(
            {
                "subject_id": pa.array([r[0] for r in label_rows], pa.int64()),
                "prediction_time": pa.array([r[1] for r in label_rows], pa.timestamp("us")),
                "boolean_value": pa.array([r[2] for r in label_rows], pa.bool_()),
            }
        )
        meds.LabelSchema.validate(labels)
        inside = labels_path.resolve().is_relative_to(root.resolve())
        staged = tmp / labels_path.resolve().relative_to(root.resolve()) if inside else labels_path
        staged.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(labels, staged)
        summary.label_rows = labels.num_rows
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
