"""The monitor log of a served predictor: pseudonymous, append-only, readable after any interruption.

One folder holds::

    predictions.jsonl   one line per prediction: time, pseudonym, probability, model and prompt hashes,
                        demo pseudonyms, the demos' vote and similarity, age (whole years), sex, age band, group
                        attributes, events in the history and its length in days, events per vocabulary, and
                        the history's distinct codes: the common ones by name (codes at least
                        ``min_code_patients`` pool patients have), the others only counted (unseen in the pool)
    reference.json      what the log is compared with, written by ``icl serve`` when the service has loaded:
                        the demonstration pool's rows (as above, no ids), code counts and prevalence, and the
                        similarity and vote of the demos its own patients get (:mod:`.reference`)
    feedback.jsonl      one line per outcome reported through POST /v1/feedback: time, pseudonym, outcome,
                        outcome date

**Pseudonyms** are ``HMAC-SHA256(key, patient_id)`` (hex, first 24 digits): the same patient gets the same
pseudonym under one key (so outcomes can be joined to predictions), and without the key a pseudonym cannot be
linked back to an id or across logs kept under different keys. The key comes from ``ICL_MONITOR_KEY`` or a key
file (created with mode 0600 when absent); keep the key file away from whoever reads the log.

**Writes** are single ``write`` calls of whole lines to files opened in append mode, so a killed process leaves
at most one torn last line; the next writer starts on a fresh line and readers skip (and count) torn lines.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.files import os_error
from icl_toolkit.data.cohort import Event, Patient
from icl_toolkit.evaluation.fairness import age_band

__all__ = [
    "Pseudonymizer",
    "load_key",
    "input_features",
    "demo_signals",
    "code_key",
    "code_counts",
    "patient_row",
    "MonitorLog",
    "read_log",
    "PREDICTIONS",
    "FEEDBACK",
    "KEY_ENV",
]

PREDICTIONS = "predictions.jsonl"
FEEDBACK = "feedback.jsonl"
KEY_ENV = "ICL_MONITOR_KEY"
REFERENCE = "reference.json"
MIN_CODE_PATIENTS = 5
"""A code is logged by name only when at least this many pool patients have it (rarer codes identify patients;
they are counted, not named)."""


class Pseudonymizer:
    """Keyed pseudonyms: ``HMAC-SHA256(key, id)``, 24 hex digits (96 bits)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigError(
                "The monitor key must be at least 16 bytes (set ICL_MONITOR_KEY to a long random "
                "string, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)."
            )
        self._key = key

    def __call__(self, patient_id: str) -> str:
        return hmac.new(self._key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def load_key(key_file: str | os.PathLike[str] | None) -> bytes:
    """The pseudonym key: ``$ICL_MONITOR_KEY`` when set, else the key file's content (a new random key is
    written there, mode 0600, when the file does not exist)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode("utf-8")
    if key_file is None:
        raise ConfigError(f"No monitor key: set {KEY_ENV} or give a key file.")
    path = Path(key_file)
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
        return path.read_text(encoding="utf-8").strip().encode("utf-8")
    except OSError as exc:
        raise os_error(exc, path, "reading the monitor key") from None


def input_features(p: Patient, hist: Sequence[Event] | None = None) -> dict[str, int]:
    """What the monitor records of a patient's input, and what its drift check compares with the pool: age in
    whole years, events in the history, and the history's length in days (``hist``: ``p.history()`` when the
    caller has it already)."""
    hist = p.history() if hist is None else hist
    return {
        "age": int(p.age_at_index),
        "events": len(hist),
        "history_days": (p.index_date - hist[0].date).days if hist else 0,
    }


def code_key(system: str, code: str) -> str:
    """How the monitor names a code: ``SYSTEM/CODE`` (``ICD10CM/G30.9``)."""
    return f"{system}/{code}"


def code_counts(patients: Iterable[Patient]) -> Counter[str]:
    """Patients having each code (distinct codes per patient, over their histories)."""
    counts: Counter[str] = Counter()
    for p in patients:
        counts.update({code_key(e.system, e.code) for e in p.history()})
    return counts


def patient_row(p: Patient, pool_codes: Mapping[str, int] | None, min_code_patients: int) -> dict[str, Any]:
    """What the monitor records of a patient (no id, date of birth or history text): :func:`input_features`, sex,
    age band, group attributes, events per vocabulary, and distinct codes: named when at least
    ``min_code_patients`` pool patients have them, ``unseen_codes`` counting those no pool patient has (without a
    pool, ``codes`` is empty and ``unseen_codes`` None)."""
    hist = p.history()
    distinct = {code_key(e.system, e.code) for e in hist}
    row: dict[str, Any] = {
        **input_features(p, hist),
        "age_band": age_band(p.age_at_index),
        "sex": p.sex,
        "groups": dict(p.groups),
        "vocab": dict(sorted(Counter(e.system for e in hist).items())),
        "distinct_codes": len(distinct),
        "unseen_codes": None,
        "codes": [],
    }
    if pool_codes is not None:
        row["unseen_codes"] = sum(1 for c in distinct if c not in pool_codes)
        row["codes"] = sorted(c for c in distinct if pool_codes.get(c, 0) >= min_code_patients)
    return row


class _AppendFile:
    """Whole lines appended with one ``write`` each; a torn last line left by a killed writer is closed off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            size = os.fstat(self.fd).st_size
            if size:
                with open(path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        os.write(self.fd, b"\n")  # the torn line stays torn (readers skip it); new lines are whole
        except OSError as exc:
            raise os_error(exc, path, "opening the monitor log") from None
        self.lock = threading.Lock()

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        if data:
            with self.lock:
                os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


def read_log(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """The records of one log file and the number of unreadable (torn) lines skipped; ``([], 0)`` when the
    file does not exist."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    out, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            out.append(rec)
        else:
            bad += 1
    return out, bad


@dataclass(frozen=True)
class FeedbackResult:
    """What :meth:`MonitorLog.record_outcomes` did: outcomes written, and duplicates not written again."""

    recorded: int
    duplicates: int


class FeedbackRejected(ValueError):
    """A batch of outcomes that was not recorded: ``unknown`` (indices of items naming patients never predicted)
    and ``conflicts`` (index, reason) of items contradicting a recorded outcome. Said once, here, for every
    caller: the HTTP status it means (:attr:`status`), the error (:attr:`error`) and each item's field and reason
    (:meth:`detail`)."""

    def __init__(self, unknown: list[int], conflicts: list[tuple[int, str]]) -> None:
        self.unknown, self.conflicts = unknown, conflicts
        super().__init__(
            f"{len(unknown)} outcome(s) for unknown patients, {len(conflicts)} contradicting "
            "recorded ones; nothing was recorded"
        )

    @property
    def status(self) -> int:
        """404 when some items name unknown patients, else 409 (a contradiction)."""
        return 404 if self.unknown else 409

    @property
    def error(self) -> str:
        if self.unknown:
            return f"{len(self.unknown)} outcome(s) for unknown patients; nothing was recorded"
        return f"{len(self.conflicts)} outcome(s) contradict recorded ones; nothing was recorded"

    def detail(self) -> list[dict[str, str]]:
        """Per item at fault: its field path in the request and why."""
        if self.unknown:
            return [
                {
                    "field": f"outcomes[{i}].patient_id",
                    "msg": "no prediction of this patient is in the monitor "
                    "log (send outcomes for patients this server predicted)",
                }
                for i in self.unknown
            ]
        return [{"field": f"outcomes[{i}]", "msg": msg} for i, msg in self.conflicts]


def demo_signals(demos: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """What only a retrieval-based predictor shows about its inputs, per prediction: the share of positive outcomes
    among the demos shown (``demo_vote``: the vote the model follows) and their mean similarity to the query
    (``demo_similarity``: it falls when the pool stops resembling the patients asked about); None without demos."""
    labels = [d["label"] for d in demos if d.get("label") is not None]
    scores = [float(d["score"]) for d in demos if d.get("score") is not None]
    return {
        "demo_vote": round(sum(labels) / len(labels), 4) if labels else None,
        "demo_similarity": round(sum(scores) / len(scores), 4) if scores else None,
    }


class MonitorLog:
    """The monitor folder of a running service.

    Args:
        folder: where ``predictions.jsonl`` and ``feedback.jsonl`` go (created).
        key: the pseudonym key (see :func:`load_key`).
        model: identity of the served model (id, dtype, checkpoint), hashed into each record's ``model_hash``.
        pool: the demonstration pool: codes at least ``min_code_patients`` of its patients have are logged by name,
            codes none has are counted as unseen (without it, neither).
        clock: the time each record is stamped with (default: now, UTC); a simulation passes its own.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        key: bytes,
        model: dict[str, Any] | None = None,
        *,
        pool: Sequence[Patient] | None = None,
        min_code_patients: int = MIN_CODE_PATIENTS,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, self.folder, "creating the monitor folder") from None
        self.pseudonym = Pseudonymizer(key)
        self.model_hash = (
            "sha256:" + hashlib.sha256(json.dumps(model or {}, sort_keys=True, default=str).encode()).hexdigest()[:16]
        )
        self.pool_codes: Counter[str] | None = code_counts(pool) if pool else None
        self.min_code_patients = min_code_patients
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._predictions = _AppendFile(self.folder / PREDICTIONS)
        self._feedback = _AppendFile(self.folder / FEEDBACK)
        self._lock = threading.Lock()
        self.known: set[str] = {r["id"] for r in read_log(self.folder / PREDICTIONS)[0]}
        self.outcomes: dict[str, tuple[int, str]] = {
            r["id"]: (r["outcome"], r["date"]) for r in read_log(self.folder / FEEDBACK)[0]
        }

    def record_predictions(
        self, patients: Sequence[Patient], predictions: Sequence[dict[str, Any]], when: dt.datetime | None = None
    ) -> None:
        """Append one record per prediction (no patient id, date of birth or history text)."""
        ts = (when or self.clock()).isoformat(timespec="milliseconds")
        records = []
        for p, pred in zip(patients, predictions):
            pid = self.pseudonym(p.patient_id)
            records.append(
                {
                    "ts": ts,
                    "id": pid,
                    "probability": round(float(pred["probability"]), 6),
                    "model_id": pred.get("model_id"),
                    "model_hash": self.model_hash,
                    "prompt_hash": pred.get("prompt_hash"),
                    "template": pred.get("template"),
                    "demos": [self.pseudonym(d["patient_id"]) for d in pred.get("demos", [])],
                    **demo_signals(pred.get("demos", [])),
                    **patient_row(p, self.pool_codes, self.min_code_patients),
                }
            )
        self._predictions.append(records)
        with self._lock:
            self.known.update(str(r["id"]) for r in records)

    def record_feedback(self, patient_id: str, outcome: int, date: dt.date, when: dt.datetime | None = None) -> str:
        """Record one outcome (see :meth:`record_outcomes`). Returns ``"recorded"`` or ``"duplicate"``.

        Raises:
            KeyError: no prediction of this patient is in the log.
            ValueError: a different outcome or date was recorded for this patient before.
        """
        try:
            result = self.record_outcomes([(patient_id, outcome, date)], when=when)
        except FeedbackRejected as exc:
            if exc.unknown:
                raise KeyError(self.pseudonym(patient_id)) from None
            raise ValueError(exc.conflicts[0][1]) from None
        return "recorded" if result.recorded else "duplicate"

    def record_outcomes(
        self, outcomes: Sequence[tuple[str, int, dt.date]], when: dt.datetime | None = None
    ) -> FeedbackResult:
        """Record outcomes ``(patient_id, outcome, date)`` for patients predicted before, all or nothing.

        The same outcome and date sent again (before, or twice in this batch) is a duplicate and is not written.

        Raises:
            FeedbackRejected: some items name patients never predicted, or contradict an outcome recorded before
                (or another item of this batch); nothing was written.
        """
        ts = (when or self.clock()).isoformat(timespec="milliseconds")
        unknown: list[int] = []
        conflicts: list[tuple[int, str]] = []
        new: dict[str, tuple[int, str]] = {}
        duplicates = 0
        with self._lock:
            for i, (patient_id, outcome, date) in enumerate(outcomes):
                pid, value = self.pseudonym(patient_id), (int(outcome), date.isoformat())
                before = self.outcomes.get(pid) or new.get(pid)
                if pid not in self.known:
                    unknown.append(i)
                elif before is None:
                    new[pid] = value
                elif before == value:
                    duplicates += 1
                else:
                    conflicts.append(
                        (
                            i,
                            f"outcome {before[0]} dated {before[1]} was recorded for this patient "
                            "before; outcomes are not overwritten",
                        )
                    )
            if unknown or conflicts:
                raise FeedbackRejected(unknown, conflicts)
            if new:
                self._feedback.append([{"ts": ts, "id": pid, "outcome": y, "date": d} for pid, (y, d) in new.items()])
                self.outcomes.update(new)
        return FeedbackResult(recorded=len(new), duplicates=duplicates)

    def write_reference(self, reference: dict[str, Any]) -> Path:
        """Write ``reference.json`` (see :func:`~icl_toolkit.evaluation.monitor.reference.pool_reference`)."""
        from icl_toolkit.core.artifacts import write_json_atomic

        path = self.folder / REFERENCE
        write_json_atomic(path, reference)
        return path

    def close(self) -> None:
        self._predictions.close()
        self._feedback.close()
