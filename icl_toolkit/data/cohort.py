"""Patient and event records, the cohort JSONL format, validation and atomic writes.

One patient per line. The format is documented in ``docs/cohort-format.md``;
in short::

    {"patient_id": "P000001", "sex": "F", "birth_date": "1941-06-02",
     "index_date": "2019-03-01",
     "events": [{"date": "2012-05-04", "kind": "diagnosis", "code": "I10",
                 "system": "ICD10CM", "name": "Essential (primary) hypertension"},
                {"date": "2018-11-20", "kind": "lab", "code": "4548-4",
                 "system": "LOINC", "name": "HbA1c", "value": 7.4, "unit": "%"}],
     "label": 1, "outcome_date": "2021-08-15",
     "rationales": {"free_text": "...", "stepwise": "..."},
     "split": "train", "metadata": {"true_risk": 0.31}}

Reading validates every line and collects every problem (``FILE:LINE: field:
expected ..., found ...``) before raising; writing goes to a temporary file in
the same folder that is renamed over the target, so an interrupted write never
leaves a half-written cohort.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from icl_toolkit.core.errors import CohortValidationError, ConfigError, IclError, InputIssue
from icl_toolkit.core.files import keep_mode, os_error

__all__ = [
    "EVENT_KINDS",
    "EventKind",
    "Sex",
    "SplitName",
    "Label",
    "Event",
    "Rationales",
    "Patient",
    "ValidationReport",
    "validate_cohort",
    "read_cohort",
    "iter_cohort",
    "write_cohort",
    "patient_to_dict",
    "content_hash",
    "check_patients",
    "parse_record",
    "record_issues",
]

EventKind = Literal["diagnosis", "medication", "procedure", "lab", "vital", "visit", "observation"]
Sex = Literal["F", "M", "U"]
SplitName = Literal["train", "val", "test"]
Label = Literal[0, 1]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

NonEmpty = Annotated[str, Field(min_length=1)]


@dataclass(slots=True)
class Event:
    """One dated item of a patient's record."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)

    date: dt.date
    kind: EventKind
    code: NonEmpty
    system: NonEmpty
    name: NonEmpty
    value: float | str | None = None
    unit: str | None = None


@dataclass(slots=True)
class Rationales:
    """Explanations of a patient's outcome, written by a teacher (human, model or generator)."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)

    free_text: NonEmpty | None = None
    stepwise: NonEmpty | None = None


@dataclass(slots=True)
class Patient:
    """A patient: demographics, dated events, index date, outcome and optional rationales.

    ``label`` is 1 when the task's outcome (by default ADRD onset) falls in the prediction window after
    ``index_date``, 0 when it does not, ``None`` when unknown; ``outcome_date``, when known, dates a positive
    outcome (a task's labels may be positive without one: the temporal guard then treats the outcome as anywhere in
    the window). ``metadata`` is free
    form; the synthetic generator keeps the true risk there (``true_risk``). ``groups`` holds attributes
    that fairness reports and monitoring break results down by (for example ``{"access": "limited"}`` or
    ``{"insurance": "medicaid"}``); they are never shown to a model.
    """

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)

    patient_id: NonEmpty
    sex: Sex
    birth_date: dt.date
    index_date: dt.date
    events: list[Event]
    label: Label | None = None
    outcome_date: dt.date | None = None
    rationales: Rationales | None = None
    split: SplitName | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    groups: dict[NonEmpty, NonEmpty] = field(default_factory=dict)

    @property
    def subject_id(self) -> str:
        """The person this record is about: ``metadata.subject_id`` when present (a MEDS subject labelled at
        several prediction times gives several records), else the record's own id. Leakage guards work on it."""
        sid = self.metadata.get("subject_id") if self.metadata else None
        return str(sid) if sid is not None else self.patient_id

    @property
    def age_at_index(self) -> float:
        """Age in years at the index date."""
        return (self.index_date - self.birth_date).days / 365.25

    def history(self) -> list[Event]:
        """Events dated on or before the index date, oldest first.

        This is the only part of a record that may reach a prompt or an
        embedding; everything dated after the index date is left out here.
        """
        cut = self.index_date
        return sorted((e for e in self.events if e.date <= cut), key=lambda e: (e.date, e.kind, e.code))


_PATIENT = TypeAdapter(Patient)
_FIELDS = (
    "patient_id",
    "sex",
    "birth_date",
    "index_date",
    "events",
    "label",
    "outcome_date",
    "rationales",
    "split",
    "metadata",
    "groups",
)


# --------------------------------------------------------------------------- writing


def _event_to_dict(e: Event) -> dict[str, Any]:
    d: dict[str, Any] = {"date": e.date.isoformat(), "kind": e.kind, "code": e.code, "system": e.system, "name": e.name}
    if e.value is not None:
        d["value"] = e.value
    if e.unit is not None:
        d["unit"] = e.unit
    return d


def patient_to_dict(p: Patient) -> dict[str, Any]:
    """The JSON-ready form of a patient, as written to a cohort file."""
    d: dict[str, Any] = {
        "patient_id": p.patient_id,
        "sex": p.sex,
        "birth_date": p.birth_date.isoformat(),
        "index_date": p.index_date.isoformat(),
        "events": [_event_to_dict(e) for e in p.events],
        "label": p.label,
        "outcome_date": p.outcome_date.isoformat() if p.outcome_date else None,
    }
    if p.rationales is not None:
        d["rationales"] = {
            k: v
            for k, v in (("free_text", p.rationales.free_text), ("stepwise", p.rationales.stepwise))
            if v is not None
        }
    if p.split is not None:
        d["split"] = p.split
    if p.metadata:
        d["metadata"] = p.metadata
    if p.groups:
        d["groups"] = p.groups
    return d


def check_patients(value: Any, what: str) -> list[Patient]:
    """The patients a library call was given, as a list; a path, a record dict or anything else is a clear error
    saying what to pass.

    Args:
        value: what the caller passed (patients expected).
        what: the argument's name, for the message (``"pool"``, ``"patients"``).

    Raises:
        ConfigError: ``value`` is a file path, or holds something that is not a :class:`Patient`.
    """
    if isinstance(value, str | os.PathLike):
        raise ConfigError(
            f"{what}: got the path {str(value)!r}, expected patients; pass "
            f"icl.read_cohort({str(value)!r}) (it also checks the file)."
        )
    if isinstance(value, Patient):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise ConfigError(f"{what}: expected a list of Patient records, got {type(value).__name__}.") from None
    for i, item in enumerate(items):
        if not isinstance(item, Patient):
            hint = (
                " (a record dict: read the file with icl.read_cohort, or build Patient(**record) after validating it)"
                if isinstance(item, dict)
                else ""
            )
            raise ConfigError(f"{what}[{i}]: expected a Patient, got {type(item).__name__}{hint}.")
    return items


def content_hash(patients: Iterable[Patient]) -> str:
    """A hash of the patient records' content (field order and file layout do not matter); artefacts built from a
    pool or cohort record it, and are refused with another one."""
    h = hashlib.sha256()
    for p in patients:
        h.update(json.dumps(patient_to_dict(p), sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()[:32]


def write_cohort(patients: Iterable[Patient], path: str | os.PathLike[str]) -> int:
    """Write patients as JSONL, atomically.

    The records go to a temporary file beside ``path`` which is renamed over it
    once complete and flushed to disk; if anything fails (or the process is
    interrupted) the target is left as it was. A replaced file keeps its mode.

    Args:
        patients: the records (an iterable: they are streamed, never held whole).
        path: the cohort file to write.

    Returns:
        The number of records written.

    Raises:
        FileAccessError: the file could not be written (one line naming the file and the fix); the target is
            unchanged.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for p in patients:
                fh.write(json.dumps(patient_to_dict(p), ensure_ascii=False, separators=(",", ":")))
                fh.write("\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        keep_mode(target, tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, IclError):
            raise os_error(exc, target, "writing the cohort") from None
        raise
    return n


# --------------------------------------------------------------------------- validation


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "-"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_UNION_TAGS = {"float": "a number, a string or null", "str": "a number, a string or null"}


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    """Turn one pydantic error into (field path, 'expected ..., found ...')."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    found = err.get("input")
    # union members add a type tag to the location (value -> value.float); one
    # message covers the whole union
    if len(loc) > 1 and loc[-1] in _UNION_TAGS:
        return _loc_to_field(loc[:-1]), f"expected {_UNION_TAGS[loc[-1]]}, found {_short(found)}"
    where = _loc_to_field(loc)
    if kind == "json_invalid":
        return "-", f"expected one JSON object per line, found invalid JSON ({err.get('msg', '')})"
    if kind == "missing":
        return where, "required field is missing; add it to the record"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return where, f"unknown field (found {_short(found)}); remove it or fix its spelling"
    msg = err.get("msg", "invalid value")
    expected = msg[len("Input should be ") :] if msg.startswith("Input should be ") else msg
    if kind == "string_too_short":
        expected = "a non-empty string"
    if kind.startswith("dataclass") or kind == "model_type":
        expected = "a JSON object"
    return where, f"expected {expected}, found {_short(found)}"


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value) if len(value) == 10 else None
        except ValueError:
            return None
    return None


def record_issues(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """Cross-field checks that a type check cannot express, as ``(field, "expected ..., found ...")`` pairs.

    The one set of record rules for every way a patient comes in: cohort files (:func:`read_cohort`,
    :func:`validate_cohort`) and ``icl serve`` requests apply it to each raw JSON record.

    They run on the raw record, so they are reported even when other fields of
    the same record are malformed (a field that does not parse is skipped here:
    the type check already reports it).
    """
    out: list[tuple[str, str]] = []
    birth, index, outcome = (_as_date(obj.get(k)) for k in ("birth_date", "index_date", "outcome_date"))
    if birth and index and index <= birth:
        out.append(("index_date", f"expected a date after birth_date {birth}, found {index}"))
    events = obj.get("events")
    if birth and isinstance(events, list):
        for i, e in enumerate(events):
            d = _as_date(e.get("date")) if isinstance(e, dict) else None
            if d and d < birth:
                out.append((f"events[{i}].date", f"expected a date on or after birth_date {birth}, found {d}"))
            v = e.get("value") if isinstance(e, dict) else None
            if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
                out.append((f"events[{i}].value", f"expected a finite number, found {v}"))
    if outcome and index and outcome <= index:
        out.append(
            (
                "outcome_date",
                f"expected a date after index_date {index}, "
                f"found {outcome}; an outcome on or before the index "
                "date belongs to an excluded (prevalent) case",
            )
        )
    return out


@dataclass(slots=True)
class ValidationReport:
    """What validating a cohort file found."""

    path: str
    n_lines: int = 0
    n_records: int = 0
    n_valid: int = 0
    issues: list[InputIssue] = field(default_factory=list)
    n_events_after_index: int = 0

    @property
    def ok(self) -> bool:
        return not self.issues and self.n_records > 0


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        yield from enumerate(fh, start=1)


def parse_record(text: str) -> tuple[Patient | None, list[tuple[str, str]], Any]:
    """One line of a cohort file checked by the record rules (the schema and the cross-field rules).

    Returns:
        The patient (``None`` when any rule is broken), every problem as ``(field, message)`` (field ``-`` for the
        line as a whole), and the parsed JSON (``None`` when the line is not JSON).
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:  # its own "line 1 column 5" would read as another line of the file
        return (
            None,
            [("-", f"expected one JSON object per line, found invalid JSON at column {exc.colno} ({exc.msg})")],
            None,
        )
    except RecursionError:
        return (
            None,
            [("-", "expected one patient record, found JSON nested too deeply to read (thousands of levels)")],
            None,
        )
    if not isinstance(obj, dict):
        return None, [("-", f"expected a JSON object (one patient), found {_short(obj)}")], obj
    p: Patient | None = None
    problems: list[tuple[str, str]] = []
    try:
        p = _PATIENT.validate_json(text)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            item = _describe(err)
            if item not in problems:
                problems.append(item)
    problems += record_issues(obj)
    return (p if not problems else None), problems, obj


def _validate_stream(path: Path, keep: bool) -> tuple[ValidationReport, list[Patient]]:
    name = str(path)
    report = ValidationReport(path=name)
    patients: list[Patient] = []
    seen: dict[str, int] = {}
    for lineno, raw in _iter_lines(path):
        report.n_lines = lineno
        if not raw.strip():
            continue
        report.n_records += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.issues.append(
                InputIssue(name, lineno, "-", f"expected UTF-8 text, found invalid byte at column {exc.start + 1}")
            )
            continue
        p, problems, obj = parse_record(text)
        report.issues.extend(InputIssue(name, lineno, where, what) for where, what in problems)
        pid = obj.get("patient_id") if isinstance(obj, dict) else None
        dup = isinstance(pid, str) and bool(pid) and _check_duplicate(pid, lineno, seen, report, name)
        if p is not None and not problems and not dup:
            report.n_valid += 1
            report.n_events_after_index += sum(1 for e in p.events if e.date > p.index_date)
            if keep:
                patients.append(p)
    if report.n_records == 0:
        report.issues.append(InputIssue(name, None, "-", "expected at least one patient record, found an empty file"))
    return report, patients


def _check_duplicate(pid: str, lineno: int, seen: dict[str, int], report: ValidationReport, name: str) -> bool:
    first = seen.setdefault(pid, lineno)
    if first != lineno:
        report.issues.append(
            InputIssue(name, lineno, "patient_id", f"expected a unique id, found {pid!r} already used on line {first}")
        )
        return True
    return False


def _existing_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise CohortValidationError([InputIssue(str(p), None, "-", "file not found; check the path")])
    if not p.is_file():
        raise CohortValidationError([InputIssue(str(p), None, "-", "expected a JSONL file, found a directory")])
    return p


def validate_cohort(path: str | os.PathLike[str]) -> ValidationReport:
    """Check every record of a cohort file and report every problem found (``icl data validate``).

    Args:
        path: the cohort JSONL file.

    Returns:
        The report: records read and valid, every problem with its line and field, events after index dates.

    Raises:
        CohortValidationError: only when the file itself cannot be read (missing, a folder).
    """
    report, _ = _validate_stream(_existing_file(path), keep=False)
    return report


def read_cohort(path: str | os.PathLike[str]) -> list[Patient]:
    """Read and validate a cohort JSONL file (one patient per line; see ``docs/cohort-format.md``).

    Args:
        path: the cohort JSONL file.

    Returns:
        The patients, in file order.

    Raises:
        CohortValidationError: listing every problem in the file (file, line, field, what was expected and found),
            if any.
    """
    report, patients = _validate_stream(_existing_file(path), keep=True)
    if report.issues:
        raise CohortValidationError(report.issues)
    return patients


def iter_cohort(path: str | os.PathLike[str]) -> Iterator[Patient]:
    """Read a cohort (validated as a whole first) and yield its patients."""
    yield from read_cohort(path)
