"""Open an OMOP CDM source (a folder of CSV files, a DuckDB or a SQLite database) as DuckDB views.

Every table is first exposed as ``raw_<table>``: all columns as text, exactly as
stored. Nothing is typed at that stage, so a non-numeric id or a broken date is
seen (and counted) later instead of failing the whole read. CSV rows with the
wrong number of fields are set aside by DuckDB (``store_rejects``) and counted
with their line numbers.

SQLite files are copied into the in-memory DuckDB database through Python's
``sqlite3`` (DuckDB's own SQLite reader is an extension that would have to be
downloaded at run time).
"""

from __future__ import annotations

import csv
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_toolkit.core.errors import ConfigError, IclError

__all__ = ["CDM_TABLES", "REQUIRED_TABLES", "KEY_COLUMNS", "OmopSource", "RejectedRow", "open_source", "column_or_null"]

# Tables the importer reads: the required ones must be present, the optional ones are read when they are.
REQUIRED_TABLES = ("person", "observation_period", "condition_occurrence")
OPTIONAL_TABLES = (
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "visit_occurrence",
    "observation",
    "death",
    "concept",
    "concept_ancestor",
)
CDM_TABLES = REQUIRED_TABLES + OPTIONAL_TABLES
_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")
# Columns without which a table cannot be used at all.
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "year_of_birth"),
    "observation_period": ("person_id", "observation_period_start_date", "observation_period_end_date"),
    "condition_occurrence": ("person_id", "condition_concept_id", "condition_start_date"),
    "drug_exposure": ("person_id", "drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": ("person_id", "procedure_concept_id", "procedure_date"),
    "measurement": ("person_id", "measurement_concept_id", "measurement_date"),
    "visit_occurrence": ("person_id", "visit_concept_id", "visit_start_date"),
    "observation": ("person_id", "observation_concept_id", "observation_date"),
    "death": ("person_id", "death_date"),
    "concept": ("concept_id", "concept_name", "vocabulary_id", "concept_code"),
    "concept_ancestor": ("ancestor_concept_id", "descendant_concept_id"),
}


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A CSV line that could not be read as a row (wrong number of fields, broken quoting)."""

    table: str
    file: str
    line: int
    error: str


@dataclass
class OmopSource:
    """An open source: a DuckDB connection with ``raw_<table>`` views over the tables found."""

    con: Any
    location: str
    kind: str  # csv | duckdb | sqlite
    tables: dict[str, str] = field(default_factory=dict)  # table -> where it came from
    columns: dict[str, set[str]] = field(default_factory=dict)  # table -> lower-case column names
    rejected: list[RejectedRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # table -> why it was not used
    _tmp: Any = None

    def has(self, table: str) -> bool:
        return table in self.tables

    def close(self) -> None:
        self.con.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> OmopSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError:  # pragma: no cover - duckdb is a core dependency
        raise IclError("Reading OMOP data needs duckdb: pip install duckdb") from None
    return duckdb


def _quote(path: str | Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _csv_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and p.is_file():
                table = name[: -len(suffix)]
                if table in CDM_TABLES:
                    if table in found:
                        raise ConfigError(
                            f"{folder}: two files for table {table}: {found[table].name} and {p.name}. Keep one."
                        )
                    found[table] = p
    return found


def _attach_csv(src: OmopSource, folder: Path) -> None:
    files = _csv_files(folder)
    for table, path in files.items():
        delim = "\t" if path.name.lower().endswith(".tsv") else None
        opts = (
            "header=true, all_varchar=true, store_rejects=true, rejects_table='rejects_" + table + "'"
            ", rejects_scan='scans_" + table + "', auto_detect=true"
        )
        if delim:
            opts += ", delim='\\t'"
        try:
            src.con.execute(f"CREATE TABLE raw_{table} AS SELECT * FROM read_csv({_quote(path)}, {opts})")
        except Exception as exc:  # duckdb raises its own exception types
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"{path}: cannot be read as a CSV table ({first}). "
                "Check that it is a comma- or tab-separated file with a header line."
            ) from None
        src.tables[table] = str(path)
        for line, err in src.con.execute(
            f"SELECT line, min(error_message) FROM rejects_{table} GROUP BY line ORDER BY line"
        ).fetchall():
            src.rejected.append(RejectedRow(table, str(path), int(line), str(err).splitlines()[0]))


def _attach_duckdb(src: OmopSource, path: Path) -> None:
    try:
        src.con.execute(f"ATTACH {_quote(path)} AS src (READ_ONLY)")
    except Exception as exc:
        raise ConfigError(f"{path}: cannot be opened as a DuckDB database ({str(exc).splitlines()[0]}).") from None
    rows = src.con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = 'src'"
    ).fetchall()
    for schema, name in rows:
        table = name.lower()
        if table in CDM_TABLES and table not in src.tables:
            src.con.execute(f'CREATE VIEW raw_{table} AS SELECT COLUMNS(*)::VARCHAR FROM src."{schema}"."{name}"')
            src.tables[table] = f"{path}:{schema}.{name}"


def _attach_sqlite(src: OmopSource, path: Path) -> None:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: cannot be opened as a SQLite database ({exc}).") from None
    src._tmp = tempfile.TemporaryDirectory(prefix="icl-omop-")
    exported: dict[str, str] = {}
    try:
        for name in names:
            table = name.lower()
            if table not in CDM_TABLES or table in exported:
                continue
            cur = db.execute(f'SELECT * FROM "{name}"')
            with open(Path(src._tmp.name) / f"{table}.csv", "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow([d[0] for d in cur.description])
                while rows := cur.fetchmany(10_000):
                    w.writerows(rows)
            exported[table] = name
    finally:
        db.close()
    _attach_csv(src, Path(src._tmp.name))  # then read like any CSV folder
    src.tables = {table: f"{path}:{exported[table]}" for table in src.tables}


def open_source(location: str | Path) -> OmopSource:
    """Open a folder of OMOP CSV files, or a ``.duckdb`` / SQLite database file.

    Raises:
        ConfigError: the location does not exist, is not readable as any of these,
            or lacks a required table or column.
    """
    duckdb = _duckdb()
    path = Path(location)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder. Give a folder of OMOP CSV files or a DuckDB/SQLite file.")
    con = duckdb.connect()
    if path.is_dir():
        src = OmopSource(con, str(path), "csv")
        _attach_csv(src, path)
    else:
        with open(path, "rb") as fh:
            head = fh.read(16)
        if head.startswith(b"SQLite format 3"):
            src = OmopSource(con, str(path), "sqlite")
            _attach_sqlite(src, path)
        else:
            src = OmopSource(con, str(path), "duckdb")
            _attach_duckdb(src, path)
    for table in src.tables:
        src.columns[table] = {d[0].lower() for d in con.execute(f"SELECT * FROM raw_{table} LIMIT 0").description}
    for table in list(src.tables):
        lacking = [c for c in KEY_COLUMNS[table] if c not in src.columns[table]]
        if not lacking:
            continue
        where = src.tables[table]
        if table in REQUIRED_TABLES:
            src.close()
            raise ConfigError(
                f"{where}: the {table} table has no column {', '.join(lacking)} (columns: "
                f"{', '.join(sorted(src.columns[table]))}). Rename the columns to the OMOP CDM names."
            )
        src.skipped[table] = f"no column {', '.join(lacking)}"
        del src.tables[table]
    missing = [t for t in REQUIRED_TABLES if t not in src.tables]
    if missing:
        src.close()
        where = "files" if src.kind == "csv" else "tables"
        raise ConfigError(
            f"{path}: the OMOP {where} {', '.join(missing)} are missing (found: "
            f"{', '.join(sorted(src.tables)) or 'none'}). A CSV folder needs files named like "
            "PERSON.csv or person.csv."
        )
    return src


def column_or_null(src: OmopSource, table: str) -> Callable[[str], str]:
    """A SQL expression for a column of ``raw_<table>``: the column trimmed, or NULL when the table lacks it."""
    cols = src.columns.get(table, set())

    def col(name: str) -> str:
        return f"NULLIF(TRIM(\"{name}\"), '')" if name in cols else "CAST(NULL AS VARCHAR)"

    return col
