"""What an importer read, kept, dropped and repaired, and why: one summary type for every data path.

``icl data from-omop`` and ``icl data from-meds`` report through :class:`ImportSummary`, with the same names, the
same console tables and the same ``<out>.summary.json`` schema (:meth:`ImportSummary.as_dict`):

- ``tables``: per input table or file (OMOP: ``person``, ``condition_occurrence``, ...; MEDS: ``data``,
  ``labels``), the rows read, rejected by the reader, kept, dropped (by reason) and repaired (by reason);
- ``attrition``: the records that did not become patients, by reason (OMOP: persons; MEDS: label rows);
- ``subjects``, ``cases``, ``controls``, ``unlabelled``, ``censored``, and ``records`` (the patients written);
- ``events_written`` (by kind), ``events_after_index`` (later events left out), ``no_history``;
- ``notes`` (unreadable lines: what a reader should see), ``missing_tables``, ``unknown_codes`` (codes of no known
  vocabulary, kept as generic events by MEDS, most common first), ``outcome`` (how outcomes were found),
  ``cases_dated`` (cases with a known outcome date), ``casts`` (columns read as the MEDS schema's type, by
  column and types, counted in files).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TableReport", "ImportSummary"]


def _add(counts: dict[str, int], reason: str, n: int) -> None:
    counts[reason] = counts.get(reason, 0) + n


@dataclass
class TableReport:
    """What happened to one input table's (or file's) rows."""

    source: str
    read: int = 0
    rejected: int = 0  # lines the reader could not split into fields
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows dropped for ``reason``."""
        _add(self.dropped, reason, n)

    def repair(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rows repaired (and kept) for ``reason``."""
        _add(self.repaired, reason, n)


@dataclass
class ImportSummary:
    """What was read, dropped, repaired and written, and why (see the module docstring)."""

    source: str
    kind: str  # csv, duckdb, sqlite (OMOP) or meds
    split: str | None = None
    tables: dict[str, TableReport] = field(default_factory=dict)
    missing_tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outcome: dict[str, Any] = field(default_factory=dict)
    attrition: dict[str, int] = field(default_factory=dict)
    subjects: int = 0
    cases: int = 0
    cases_dated: int = 0  # cases whose outcome date is known (an outcome record after the index date)
    controls: int = 0
    unlabelled: int = 0
    censored: int = 0
    events_written: dict[str, int] = field(default_factory=dict)
    events_after_index: int = 0
    no_history: int = 0
    unknown_codes: Counter[str] = field(default_factory=Counter)
    casts: dict[str, int] = field(default_factory=dict)  # "column: from -> to" -> files whose column was cast

    @property
    def records(self) -> int:
        """The patient records written."""
        return self.cases + self.controls + self.unlabelled

    def exclude(self, reason: str, n: int = 1) -> None:
        """Count ``n`` records (persons, label rows) left out for ``reason``."""
        _add(self.attrition, reason, n)

    def cast(self, column: str, found: str, want: str) -> None:
        """Count one file whose ``column`` was read as ``want`` (the MEDS schema's type) from ``found``."""
        _add(self.casts, f"{column}: {found} -> {want}", 1)

    def event(self, kind: str) -> None:
        """Count one event written."""
        _add(self.events_written, kind, 1)

    def as_dict(self) -> dict[str, Any]:
        """The summary as ``<out>.summary.json`` keeps it (one schema for every importer)."""
        return {
            "source": self.source,
            "kind": self.kind,
            "split": self.split,
            "tables": {k: vars(v) for k, v in self.tables.items()},
            "missing_tables": self.missing_tables,
            "notes": self.notes,
            "outcome": self.outcome,
            "subjects": self.subjects,
            "attrition": dict(sorted(self.attrition.items(), key=lambda kv: -kv[1])),
            "records": self.records,
            "cases": self.cases,
            "cases_with_outcome_date": self.cases_dated,
            "controls": self.controls,
            "unlabelled": self.unlabelled,
            "censored": self.censored,
            "events_written": self.events_written,
            "events_after_index_left_out": self.events_after_index,
            "patients_without_history": self.no_history,
            "unknown_codes_most_common": [[c, n] for c, n in self.unknown_codes.most_common(20)],
            "casts": self.casts,
        }
