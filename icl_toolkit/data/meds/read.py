"""A MEDS dataset and an ACES label file -> cohort records, streamed one subject at a time.

Each label row (``subject_id, prediction_time, boolean_value``) becomes one record: index date = the prediction
time's date (MEDS: the inclusive end of usable data), label = ``boolean_value``, events = the subject's rows timed
at or before the prediction time, outcome date = the first outcome record after it (see
:class:`~icl_toolkit.data.meds.codes.OutcomeMatcher`). Static rows and ``MEDS_BIRTH`` give sex and birth date.

Reading streams every ``data/**/*.parquet`` shard in record batches (pyarrow). MEDS keeps each subject's rows
contiguous, sorted by time and in one shard, so memory holds the labels, the set of subject ids seen and one
subject's rows; a shard that breaks this is an error naming the file and the subject. Every file (data, codes,
splits, labels) is read as the ``meds`` package's schema types, as MEDS tools write them in any width: a
``large_string`` as a string, a ``large_list`` as a list, nanosecond timestamps cut to microseconds, integer ids
widened; each cast is counted in the summary (``casts``), and only a column that cannot be cast is an error naming
the file and the column.
Every row that does not become an event and every label row that does not become a record is counted by reason.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from icl_toolkit.core.errors import ConfigError, IclError
from icl_toolkit.data.cohort import Event, EventKind, Label, Patient, Sex, SplitName
from icl_toolkit.data.meds.codes import CodeMap, CodeResolver, MappedCode, OutcomeMatcher
from icl_toolkit.data.omop.outcome import ADRD as ADRD_OUTCOME
from icl_toolkit.data.omop.outcome import OutcomeDefinition
from icl_toolkit.data.summary import ImportSummary, TableReport
from icl_toolkit.data.task import ADRD, Task

__all__ = ["SPLIT_NAMES", "MedsCohort", "read_labels", "open_meds", "RECORDS_FILE"]

SPLIT_NAMES = {"train": "train", "tuning": "val", "held_out": "test"}
"""MEDS split -> the cohort's split field."""
RECORDS_FILE = "metadata/icl_records.parquet"
"""Written by ``icl data to-meds``: the record id of each (subject, prediction time), so a round trip keeps ids."""

_TS = pa.timestamp("us")
_DATA_TYPES = {
    "subject_id": pa.int64(),
    "time": _TS,
    "code": pa.string(),
    "numeric_value": pa.float32(),
    "text_value": pa.large_string(),
    "unit": pa.string(),
}
_LABEL_TYPES = {"subject_id": pa.int64(), "prediction_time": _TS, "boolean_value": pa.bool_()}


def _meds() -> Any:
    try:
        import meds
    except ImportError:  # pragma: no cover - a core dependency
        raise IclError('Reading MEDS needs the meds package: pip install "meds>=0.4.1,<0.5"') from None
    return meds


# --------------------------------------------------------------------------- schema checks and casts


def _check_columns(
    path: Path,
    schema: pa.Schema,
    types: dict[str, pa.DataType],
    required: tuple[str, ...],
    summary: ImportSummary | None,
    fix: str,
) -> dict[str, pa.DataType]:
    """The columns to read and the type to cast each to; a missing or uncastable column is an error naming the
    file and the column."""
    names = set(schema.names)
    missing = [c for c in required if c not in names]
    if missing:
        raise ConfigError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(schema.names) or 'none'}). {fix}"
        )
    out: dict[str, pa.DataType] = {}
    for col, want in types.items():
        if col not in names:
            continue
        got = schema.field(col).type
        if got != want:
            text = pa.types.is_string(got) or pa.types.is_large_string(got) or pa.types.is_dictionary(got)
            ok = (
                (pa.types.is_integer(want) and pa.types.is_integer(got))
                or (pa.types.is_timestamp(want) and (pa.types.is_timestamp(got) or pa.types.is_date(got)))
                or (pa.types.is_floating(want) and (pa.types.is_floating(got) or pa.types.is_integer(got)))
                or ((pa.types.is_string(want) or pa.types.is_large_string(want)) and text)
                or (pa.types.is_boolean(want) and pa.types.is_integer(got))
                or (pa.types.is_list(want) and (pa.types.is_list(got) or pa.types.is_large_list(got)))
            )
            if not ok:
                raise ConfigError(
                    f"{path}: column {col!r}: expected {want} (MEDS), found {got}; convert it "
                    f"before import (for example with pyarrow.compute.cast or polars .cast)."
                )
            if summary is not None and not (pa.types.is_floating(want) and pa.types.is_floating(got)):
                summary.cast(col, str(got), str(want))
        out[col] = want
    return out


def _cast(table: pa.Table | pa.RecordBatch, path: Path, col: str, want: pa.DataType) -> pa.Array:
    arr = table.column(col)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_floating(want) and pa.types.is_floating(arr.type):
        return arr  # float64 stays float64 (no precision lost); float32 is read exactly
    if arr.type == want:
        return arr
    # a finer timestamp (polars writes nanoseconds) is cut to microseconds, MEDS's unit; other casts must be exact
    safe = not (pa.types.is_timestamp(want) and pa.types.is_timestamp(arr.type))
    try:
        return arr.cast(want, safe=safe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(
            f"{path}: column {col!r}: values that cannot be read as {want} ({exc}); "
            "fix the column's values or type before import."
        ) from None


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if p.is_file())
    raise ConfigError(f"{path}: not found; check the path.")


# --------------------------------------------------------------------------- labels


def read_labels(
    path: str | Path, summary: ImportSummary, subjects: set[int] | None = None
) -> dict[int, list[tuple[dt.datetime, bool | None]]]:
    """An ACES/MEDS label file (or a folder of them) -> ``subject -> [(prediction_time, label)]`` sorted by time.

    Rows with a null subject or time, and repeated (subject, time) pairs, are dropped and counted. ``subjects``
    keeps only those subjects (a split); the others are counted as in other splits.
    """
    meds = _meds()
    files = _parquet_files(Path(path))
    if not files:
        raise ConfigError(f"{path}: no .parquet label files here; give an ACES output file or a folder of them.")
    out: dict[int, dict[dt.datetime, bool | None]] = {}
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"{f}: not a readable parquet file ({exc}).") from None
        if "boolean_value" not in schema.names:
            other = [c for c in ("integer_value", "float_value", "categorical_value") if c in schema.names]
            raise ConfigError(
                f"{f}: no boolean_value column"
                + (f" (found {', '.join(other)})" if other else "")
                + "; icl predicts binary outcomes: give a task whose label is boolean_value."
            )
        types = _check_columns(
            f,
            schema,
            _LABEL_TYPES,
            ("subject_id", "prediction_time"),
            summary,
            f"A MEDS label file has subject_id, prediction_time and boolean_value ({meds.LabelSchema.__name__}).",
        )
        extra = [
            c for c in schema.names if c not in types and c not in ("integer_value", "float_value", "categorical_value")
        ]
        if extra:
            summary.notes.append(f"{f}: extra columns not in the MEDS label schema left unread: {', '.join(extra)}")
        table = pq.read_table(f, columns=list(types))
        cols = {c: _cast(table, f, c, t).to_pylist() for c, t in types.items()}
        for sid, t, y in zip(cols["subject_id"], cols["prediction_time"], cols["boolean_value"]):
            summary.tables["labels"].read += 1
            if sid is None or t is None:
                summary.exclude(f"null {'subject_id' if sid is None else 'prediction_time'}")
                continue
            if subjects is not None and sid not in subjects:
                summary.exclude(f"of subjects outside split {summary.split}")
                continue
            times = out.setdefault(sid, {})
            if t in times:
                summary.exclude(
                    "repeated (subject_id, prediction_time)"
                    if times[t] == y
                    else "conflicting labels for one (subject_id, prediction_time): first kept"
                )
                continue
            times[t] = y
    return {sid: sorted(times.items()) for sid, times in out.items()}


def _read_splits(root: Path, summary: ImportSummary) -> dict[int, str]:
    meds = _meds()
    f = root / meds.subject_splits_filepath
    if not f.is_file():
        return {}
    schema = pq.read_schema(f)
    types = _check_columns(
        f,
        schema,
        {"subject_id": pa.int64(), "split": pa.string()},
        ("subject_id", "split"),
        summary,
        "See the MEDS subject split schema.",
    )
    table = pq.read_table(f, columns=list(types))
    ids, names = (_cast(table, f, c, t).to_pylist() for c, t in types.items())
    return {s: n for s, n in zip(ids, names) if s is not None and n is not None}


def _read_codes(root: Path, summary: ImportSummary) -> tuple[dict[str, str], dict[str, str]]:
    """codes.parquet's descriptions (and the ``icl_kind`` an export of this toolkit writes), its columns read as
    the MEDS code metadata schema's types (``large_string`` as string; ``parent_codes`` is not read)."""
    meds = _meds()
    f = root / meds.code_metadata_filepath
    if not f.is_file():
        return {}, {}
    try:
        schema = pq.read_schema(f)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{f}: not a readable parquet file ({exc}).") from None
    types = _check_columns(
        f,
        schema,
        {
            "code": pa.string(),
            "description": pa.string(),
            "parent_codes": pa.list_(pa.string()),
            "icl_kind": pa.string(),
        },
        ("code",),
        summary,
        f"A MEDS code metadata file has code, description and parent_codes ({meds.CodeMetadataSchema.__name__}).",
    )
    table = pq.read_table(f, columns=list(types))
    cols = {c: _cast(table, f, c, t).to_pylist() for c, t in types.items()}
    codes = cols["code"]
    desc = {c: d for c, d in zip(codes, cols.get("description", [])) if c and d}
    kinds = {c: k for c, k in zip(codes, cols.get("icl_kind", [])) if c and k}
    return desc, kinds


def _read_record_ids(root: Path) -> dict[tuple[int, dt.datetime], str]:
    f = root / RECORDS_FILE
    if not f.is_file():
        return {}
    t = pq.read_table(f)
    return {
        (s, p): r
        for s, p, r in zip(
            t.column("subject_id").to_pylist(),
            t.column("prediction_time").to_pylist(),
            t.column("patient_id").to_pylist(),
        )
    }


# --------------------------------------------------------------------------- data


def _value(v: Any, is_f32: bool) -> float | int | None:
    if v is None:
        return None
    if not math.isfinite(v):
        return math.nan
    if is_f32:
        v = float(str(np.float32(v)))  # the shortest decimal that is this float32 (7.4, not 7.400000095)
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


@dataclass
class MedsCohort:
    """The records of a MEDS dataset and label file, read as patients one subject at a time.

    Iterate it once; ``summary`` is complete when iteration has finished. ``total_rows`` is the number of data
    rows to stream (for a progress bar; ``progress(n)`` is called per batch of rows).
    """

    root: Path
    labels: dict[int, list[tuple[dt.datetime, bool | None]]]
    shards: list[Path]
    resolver: CodeResolver
    outcome: OutcomeMatcher | None  # None: positives keep no outcome date (another task than ADRD, no --outcome)
    splits: dict[int, str]
    record_ids: dict[tuple[int, dt.datetime], str]
    summary: ImportSummary
    batch_size: int = 65_536
    progress: Callable[[int], None] | None = None

    @property
    def total_rows(self) -> int:
        return sum(pq.ParquetFile(s).metadata.num_rows for s in self.shards)

    def __len__(self) -> int:
        return sum(len(v) for v in self.labels.values())

    def __iter__(self) -> Iterator[Patient]:
        s = self.summary
        seen: set[int] = set()
        for shard in self.shards:
            yield from self._shard(shard, seen)
        for sid, rows in self.labels.items():
            if sid not in seen:
                s.exclude("label for a subject not in the data", len(rows))
        s.tables["labels"].kept = s.records

    def _shard(self, path: Path, seen: set[int]) -> Iterator[Patient]:
        meds = _meds()
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"{path}: not a readable parquet file ({exc}).") from None
        types = _check_columns(
            path,
            pf.schema_arrow,
            _DATA_TYPES,
            ("subject_id", "time", "code"),
            self.summary,
            f"A MEDS data shard has subject_id, time and code ({meds.DataSchema.__name__}); "
            "numeric_value and text_value are optional.",
        )
        is_f32 = "numeric_value" in types and pf.schema_arrow.field("numeric_value").type == pa.float32()
        current: int | None = None
        rows: list[tuple[Any, ...]] = []
        for batch in pf.iter_batches(batch_size=self.batch_size, columns=list(types)):
            cols = {c: _cast(batch, path, c, t).to_pylist() for c, t in types.items()}
            n = batch.num_rows
            self.summary.tables["data"].read += n
            none = [None] * n
            for sid, t, code, num, txt, unit in zip(
                cols["subject_id"],
                cols["time"],
                cols["code"],
                cols.get("numeric_value", none),
                cols.get("text_value", none),
                cols.get("unit", none),
            ):
                if sid != current:
                    if current is not None and rows:
                        yield from self._subject(current, rows)
                    rows = []
                    if sid is None:
                        raise ConfigError(f"{path}: a row with a null subject_id; MEDS requires one on every row.")
                    if sid in seen:
                        raise ConfigError(
                            f"{path}: subject_id {sid} appears again after other subjects (or in an "
                            "earlier shard); MEDS keeps each subject's rows together in one shard, "
                            "sorted by time. Sort the data by subject_id, time before import."
                        )
                    seen.add(sid)
                    current = sid
                if sid in self.labels:
                    rows.append((t, code, _value(num, is_f32), txt, unit))
                else:
                    self.summary.tables["data"].drop("of subjects without a label (not read further)")
            if self.progress is not None:
                self.progress(n)
        if current is not None and rows:
            yield from self._subject(current, rows)

    def _subject(self, sid: int, rows: list[tuple[Any, ...]]) -> Iterator[Patient]:
        s, res = self.summary, self.resolver
        data = s.tables["data"]
        s.subjects += 1
        birth: dt.date | None = None
        sex: str | None = None
        groups: dict[str, str] = {}
        events: list[tuple[dt.datetime, Event, str]] = []
        for t, code, num, txt, unit in rows:
            if code is None:
                data.drop("null code")
                continue
            if res.is_birth(code):
                data.kept += 1
                if t is not None and birth is None:
                    birth = t.date()
                continue
            x = res.sex(code)
            if x is not None:
                data.kept += 1
                if sex is None or sex == "U":
                    sex = x
                continue
            if t is None:
                g = res.group(code)
                if g is None:
                    data.drop("static row not used (not sex, birth or a group)")
                else:
                    data.kept += 1
                    groups.setdefault(*g)
                continue
            if code.upper() in ("MEDS_DEATH", "DEATH"):
                data.drop("death record (not an event kind)")
                continue
            mapped = res.resolve(code)
            if not isinstance(mapped, MappedCode):
                data.drop(mapped)
                continue
            value = num if num is not None else (txt if txt else None)
            if isinstance(value, float) and math.isnan(value):
                data.repair("non-finite numeric_value removed (event kept)")
                value = None
            kind = mapped.kind
            if mapped.generic:  # no vocabulary matched: kept as the code itself, a measurement when it has a number
                s.unknown_codes[code] += 1
                if isinstance(value, int | float) and kind == "observation":
                    kind = "lab"
            unit = unit or mapped.unit
            events.append(
                (
                    t,
                    Event(
                        date=t.date(),
                        kind=cast(EventKind, kind),
                        code=mapped.code,
                        system=mapped.system,
                        name=mapped.name,
                        value=value,
                        unit=unit if value is not None and unit else None,
                    ),
                    code,
                )
            )
        labels = self.labels[sid]
        if birth is None:
            s.exclude("subject has no birth date (no MEDS_BIRTH row)", len(labels))
            data.drop("subject has no birth date", len(events))
            return
        kept = []
        for ev in events:
            if ev[0].date() < birth:
                data.drop("dated before birth")
            else:
                kept.append(ev)
        events = sorted(kept, key=lambda e: (e[0], e[1].kind, e[1].code))
        data.kept += len(events)
        if sex is None:
            data.repair("no sex row: sex set to U")
            sex = "U"
        dates = [t.date() for t, _ in labels]
        by_date = len(set(dates)) == len(dates)
        for pt, y in labels:
            if pt.date() <= birth:
                s.exclude("prediction time on or before birth")
                continue
            history = [e for t, e, _ in events if t <= pt]
            outcome = None
            if y and self.outcome is not None:  # the label is the truth; an outcome record after it dates it
                outcome = next(
                    (t.date() for t, _, code in events if t > pt and t.date() > pt.date() and self.outcome(code)), None
                )
                s.cases_dated += outcome is not None
            s.events_after_index += len(events) - len(history)
            rid = self.record_ids.get((sid, pt))
            if rid is None:
                rid = (
                    str(sid)
                    if len(labels) == 1
                    else f"{sid}@{pt.date().isoformat() if by_date else pt.isoformat(timespec='minutes')}"
                )
            split = self.splits.get(sid)
            meta: dict[str, Any] = {"source": "meds", "subject_id": sid, "prediction_time": pt.isoformat()}
            if split is not None and split not in SPLIT_NAMES:
                meta["meds_split"] = split
            if y is None:
                s.unlabelled += 1
            elif y:
                s.cases += 1
            else:
                s.controls += 1
            for e in history:
                s.event(e.kind)
            yield Patient(
                patient_id=rid,
                sex=cast(Sex, sex),
                birth_date=birth,
                index_date=pt.date(),
                events=history,
                label=None if y is None else cast(Label, int(y)),
                outcome_date=outcome,
                split=cast(SplitName | None, SPLIT_NAMES.get(split) if split else None),
                metadata=meta,
                groups=dict(groups),
            )


def open_meds(
    root: str | Path,
    labels: str | Path,
    *,
    split: str | None = None,
    code_map: CodeMap | None = None,
    outcome: OutcomeDefinition | None = None,
    task: Task = ADRD,
) -> MedsCohort:
    """Check a MEDS root and a label file and get ready to stream records (see the module docstring).

    Args:
        root: the MEDS root (``data/``, ``metadata/``).
        labels: an ACES output parquet file, or a folder of them.
        split: keep only subjects of this split (``train``, ``tuning``, ``held_out`` or another name in
            ``metadata/subject_splits.parquet``).
        code_map: more codes and vocabularies (:func:`~icl_toolkit.data.meds.codes.load_code_map`).
        outcome: which codes are outcome records, for the outcome date (default: ADRD's codes when ``task`` is
            the ADRD task; for another task without ``outcome``, positives keep no date).
        task: the task the labels answer.

    Raises:
        ConfigError: a missing root, data folder, split file or column; a column of the wrong type.
    """
    meds = _meds()
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder; --root is a MEDS root with data/ and metadata/.")
    data = root / meds.data_subdirectory
    shards = _parquet_files(data) if data.is_dir() else []
    if not shards:
        raise ConfigError(f"{data}: no parquet shards; a MEDS root keeps its data in data/**/*.parquet.")
    summary = ImportSummary(
        str(root),
        "meds",
        split,
        tables={
            "data": TableReport(f"{data} ({len(shards)} shard{'s' if len(shards) != 1 else ''})"),
            "labels": TableReport(str(labels)),
        },
    )
    ds = root / meds.dataset_metadata_filepath
    if ds.is_file():
        import json

        try:
            meds.DatasetMetadataSchema.validate(json.loads(ds.read_text(encoding="utf-8")))
        except Exception as exc:
            summary.notes.append(f"{ds}: not valid MEDS dataset metadata ({exc}); read anyway")
    splits = _read_splits(root, summary)
    subjects = None
    if split is not None:
        if not splits:
            raise ConfigError(
                f"{root / meds.subject_splits_filepath}: not found, so --split {split} cannot be "
                "applied; leave --split out to read every labelled subject."
            )
        subjects = {s for s, n in splits.items() if n == split}
        if not subjects:
            names = sorted(set(splits.values()))
            raise ConfigError(
                f"--split {split}: no subject has this split in {meds.subject_splits_filepath} "
                f"(splits there: {', '.join(names)})."
            )
    lab = read_labels(labels, summary, subjects)
    desc, kinds = _read_codes(root, summary)
    return MedsCohort(
        root,
        lab,
        shards,
        CodeResolver(code_map, desc, kinds),
        OutcomeMatcher(outcome or ADRD_OUTCOME) if outcome is not None or task.name == ADRD.name else None,
        splits,
        _read_record_ids(root),
        summary,
    )
