"""OMOP CDM tables -> cohort records with an index date, a label and the history before the index.

The steps, all inside one DuckDB connection (see :mod:`icl_toolkit.data.omop.source`):

1. **Type and clean** every table from its text form. Each row gets the first
   problem it has (``person_id not a whole number``, ``date missing or not a
   date``, ``person not in the person table``, ``dated before birth``, ``dated
   after the as-of date``, ``outside every observation period``, ``no concept and
   no source value``) and rows with a problem are dropped and counted. Repairs
   that keep a row are counted too (an unmapped concept named by its source
   value, a missing birth month, an observation period ending after the as-of
   date cut back to it).
2. **Name** events: the standard concept (code, vocabulary, name) when mapped;
   else the source concept; else the source value (system ``source``).
3. **Find outcome records** with the :class:`~icl_toolkit.data.omop.outcome.OutcomeDefinition`.
4. **Place the index date** with the :class:`IndexRule` (the same rule for every
   person, computed from birth date and observation periods only, never from
   outcome records) and **label** (see :func:`label_person`).
5. **Write** each person in the cohort with the events dated on or before the
   index date.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from icl_toolkit.data.cohort import Event, EventKind, Label, Patient, Sex
from icl_toolkit.data.omop.outcome import ADRD, OutcomeDefinition, normalize_code
from icl_toolkit.data.omop.source import OPTIONAL_TABLES, OmopSource, column_or_null
from icl_toolkit.data.summary import ImportSummary, TableReport
from icl_toolkit.data.vocabulary import VITAL_CODES

__all__ = [
    "IndexRule",
    "OmopConfig",
    "Candidate",
    "label_person",
    "place_index",
    "add_years",
    "prepare_cohort",
    "build_cohort",
    "OmopCohort",
]

_FIXED = re.compile(r"^fixed:(\d{4}-\d{2}-\d{2})$")
_VITAL_WORDS = re.compile(
    r"blood pressure|heart rate|pulse|body weight|body height|body mass index|bmi\b|"
    r"respiratory rate|body temperature|oxygen saturation",
    re.IGNORECASE,
)


def _age_reached(birth: dt.date, age: float) -> dt.date:
    """The first date at which ``Patient.age_at_index`` (days / 365.25) is at least ``age``."""
    return birth + dt.timedelta(days=math.ceil(age * 365.25))


def add_years(d: dt.date, years: float) -> dt.date:
    """``d`` plus whole years (29 February becomes 28 February); fractions of a year as days."""
    whole = int(years)
    try:
        out = d.replace(year=d.year + whole)
    except ValueError:
        out = d.replace(year=d.year + whole, day=28)
    return out + dt.timedelta(days=round((years - whole) * 365.25))


class IndexRule(BaseModel):
    """How the index date is placed; one rule for every person, blind to outcome records.

    ``first-eligible``: the first date on which the person is at least
    ``min_age`` years old and has ``min_history_years`` of continuous
    observation before it (within one observation period).

    ``fixed:YYYY-MM-DD``: the same calendar date for everyone; people not in an
    observation period on that date, with less prior observation than
    ``min_history_years`` or younger than ``min_age`` then are not eligible.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str = "first-eligible"
    min_age: float = Field(60.0, ge=0, le=120)
    min_history_years: float = Field(1.0, ge=0, le=100)

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: str) -> str:
        v = v.strip()
        if v == "first-eligible":
            return v
        m = _FIXED.match(v)
        if m:
            try:
                dt.date.fromisoformat(m.group(1))
            except ValueError:
                raise ValueError(f"{m.group(1)!r} is not a calendar date") from None
            return v
        raise ValueError("the index date rule must be 'first-eligible' or 'fixed:YYYY-MM-DD'")

    @property
    def fixed_date(self) -> dt.date | None:
        m = _FIXED.match(self.rule)
        return dt.date.fromisoformat(m.group(1)) if m else None


class OmopConfig(BaseModel):
    """Everything that decides which records come out of an OMOP import."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_years: float = Field(5.0, gt=0, le=50)
    """Prediction window after the index date, in years."""
    index: IndexRule = IndexRule()
    outcome: OutcomeDefinition = ADRD
    as_of: dt.date = Field(default_factory=dt.date.today)
    """Records dated after this are treated as errors (data extraction date)."""
    keep_outside_observation: bool = False
    """Keep events dated outside every observation period (dropped by default)."""


# --------------------------------------------------------------------------- cleaning (SQL)


def _id(expr: str) -> str:
    """A whole number, or NULL. Exports that store ids as DOUBLE write ``4180628.0``: a whole-number float is
    accepted, a true fraction (``1.5``) is not (a plain cast would round it to another concept)."""
    return (
        f"CASE WHEN regexp_full_match(trim({expr}), '[0-9]+(\\.0*)?') "
        f"THEN TRY_CAST(regexp_replace(trim({expr}), '\\.0*$', '') AS BIGINT) END"
    )


def _date(*exprs: str) -> str:
    """The first of ``exprs`` that is a date (ISO or ``YYYYMMDD``) in years 1-9999, or NULL (DuckDB reads
    ``0000-01-01`` as 1 BC, which no Python date can hold)."""
    parts = []
    for e in exprs:
        parts += [f"TRY_CAST({e} AS DATE)", f"TRY_CAST(TRY_STRPTIME({e}, '%Y%m%d') AS DATE)"]
    first = "COALESCE(" + ", ".join(parts) + ")"
    return f"(CASE WHEN {first} BETWEEN DATE '0001-01-01' AND DATE '9999-12-31' THEN {first} END)"


def _problems(cases: list[tuple[str, str]]) -> str:
    return "CASE " + " ".join(f"WHEN {cond} THEN '{reason}'" for cond, reason in cases) + " END"


def _count(con: Any, table: str, report: TableReport, repairs: dict[str, str] | None = None) -> None:
    """Fill ``report`` from a cleaned table: rows per problem, and kept rows matching each repair's condition."""
    rows = con.execute(f"SELECT problem, count(*) FROM {table} GROUP BY problem ORDER BY 2 DESC").fetchall()
    for problem, n in rows:
        report.read += n
        if problem is None:
            report.kept += n
        else:
            report.dropped[problem] = n
    for reason, cond in (repairs or {}).items():
        n = con.execute(f"SELECT count(*) FROM {table} WHERE problem IS NULL AND ({cond})").fetchone()[0]
        if n:
            report.repaired[reason] = n


def _clean_persons(src: OmopSource, cfg: OmopConfig, report: TableReport) -> None:
    c = column_or_null(src, "person")
    pid, yob, mob, dob = _id(c("person_id")), _id(c("year_of_birth")), _id(c("month_of_birth")), _id(c("day_of_birth"))
    src.con.execute(f"""
        CREATE TEMP TABLE person_t AS
        WITH t AS (
            SELECT {c("person_id")} AS raw_pid, {pid} AS pid, {yob} AS yob, {mob} AS mob, {dob} AS dob,
                   {_date(c("birth_datetime"))} AS bdt, {_id(c("gender_concept_id"))} AS gender,
                   upper(left({c("gender_source_value")}, 1)) AS gsv, {_id(c("race_concept_id"))} AS race_id,
                   {_id(c("ethnicity_concept_id"))} AS eth_id, row_number() OVER () AS rn
            FROM raw_person),
        b AS (
            SELECT *, COALESCE(bdt, TRY_CAST(printf('%04d-%02d-%02d', yob, mob, dob) AS DATE),
                               TRY_CAST(printf('%04d-%02d-15', yob, mob) AS DATE),
                               TRY_CAST(printf('%04d-07-01', yob) AS DATE)) AS birth,
                   row_number() OVER (PARTITION BY pid ORDER BY rn) AS dup
            FROM t)
        SELECT pid, birth, race_id, eth_id,
               CASE WHEN gender = 8532 THEN 'F' WHEN gender = 8507 THEN 'M'
                    WHEN gsv IN ('F', 'M') THEN gsv ELSE 'U' END AS sex,
               bdt IS NULL AND (mob IS NULL OR dob IS NULL) AS birth_guessed,
               {
        _problems(
            [
                ("raw_pid IS NULL", "person_id missing"),
                ("pid IS NULL", "person_id not a whole number"),
                ("birth IS NULL", "year_of_birth missing or not a number"),
                (f"birth > DATE '{cfg.as_of}' OR year(birth) < 1850", "birth date before 1850 or after the as-of date"),
                ("dup > 1", "duplicate person_id (first row kept)"),
            ]
        )
    } AS problem
        FROM b""")
    _count(src.con, "person_t", report, {"birth month or day missing (mid-month / 1 July used)": "birth_guessed"})
    src.con.execute(f"""
        CREATE TEMP TABLE person AS
        SELECT p.pid, p.birth, p.sex, {_group_name("p.race_id", "rc")} AS race,
               {_group_name("p.eth_id", "ec")} AS ethnicity
        FROM person_t p LEFT JOIN concept rc ON rc.concept_id = p.race_id
                        LEFT JOIN concept ec ON ec.concept_id = p.eth_id
        WHERE p.problem IS NULL""")


# OMB race and ethnicity concepts (OMOP vocabulary "Race" and "Ethnicity"), named here for sources whose concept
# table is missing or does not carry them
GROUP_CONCEPTS = {
    8527: "White",
    8516: "Black or African American",
    8515: "Asian",
    8557: "Native Hawaiian or Other Pacific Islander",
    8657: "American Indian or Alaska Native",
    38003563: "Hispanic or Latino",
    38003564: "Not Hispanic or Latino",
}


def _group_name(concept_id: str, concept: str) -> str:
    """SQL naming a person's race or ethnicity concept: ``unknown`` for 0 or none, else the concept table's name,
    else the OMB name, else ``concept <id>``."""
    known = " ".join(f"WHEN {k} THEN '{v}'" for k, v in GROUP_CONCEPTS.items())
    return (
        f"CASE WHEN coalesce({concept_id}, 0) = 0 THEN 'unknown' "
        f"ELSE coalesce({concept}.concept_name, CASE {concept_id} {known} END, 'concept ' || {concept_id}) END"
    )


def _clean_periods(src: OmopSource, cfg: OmopConfig, report: TableReport) -> None:
    c = column_or_null(src, "observation_period")
    src.con.execute(f"""
        CREATE TEMP TABLE period_t AS
        WITH t AS (SELECT {_id(c("person_id"))} AS pid, {_date(c("observation_period_start_date"))} AS s,
                          {_date(c("observation_period_end_date"))} AS e FROM raw_observation_period)
        SELECT t.pid, t.s, least(t.e, DATE '{cfg.as_of}') AS e, t.e > DATE '{cfg.as_of}' AS clipped,
               {
        _problems(
            [
                ("t.pid IS NULL", "person_id missing or not a whole number"),
                ("t.s IS NULL OR t.e IS NULL", "date missing or not a date"),
                ("p.pid IS NULL", "person not in the person table (or dropped there)"),
                ("t.e < t.s", "ends before it starts"),
                (f"t.s > DATE '{cfg.as_of}'", "starts after the as-of date"),
            ]
        )
    } AS problem
        FROM t LEFT JOIN person p ON p.pid = t.pid""")
    _count(src.con, "period_t", report, {"end after the as-of date (cut back to it)": "clipped"})
    src.con.execute("CREATE TEMP TABLE period AS SELECT pid, s, e FROM period_t WHERE problem IS NULL")


def _clean_death(src: OmopSource, cfg: OmopConfig, report: TableReport | None) -> None:
    if report is None:
        src.con.execute("CREATE TEMP TABLE death (pid BIGINT, d DATE)")
        return
    c = column_or_null(src, "death")
    src.con.execute(f"""
        CREATE TEMP TABLE death_t AS
        WITH t AS (SELECT {_id(c("person_id"))} AS pid, {
        _date(c("death_date"), c("death_datetime"))
    } AS d FROM raw_death)
        SELECT t.pid, t.d,
               {
        _problems(
            [
                ("t.pid IS NULL", "person_id missing or not a whole number"),
                ("t.d IS NULL", "date missing or not a date"),
                ("p.pid IS NULL", "person not in the person table (or dropped there)"),
                ("t.d < p.birth", "dated before birth"),
                (f"t.d > DATE '{cfg.as_of}'", "dated after the as-of date"),
            ]
        )
    } AS problem
        FROM t LEFT JOIN person p ON p.pid = t.pid""")
    _count(src.con, "death_t", report)
    src.con.execute(
        "CREATE TEMP TABLE death AS SELECT pid, min(d) AS d FROM death_t WHERE problem IS NULL GROUP BY pid"
    )


def _clean_concepts(src: OmopSource, report: TableReport | None, ancestor: TableReport | None) -> None:
    if report is None:
        src.con.execute(
            "CREATE TEMP TABLE concept (concept_id BIGINT, concept_name VARCHAR, vocabulary_id VARCHAR, "
            "concept_code VARCHAR)"
        )
    else:
        c = column_or_null(src, "concept")
        src.con.execute(f"""
            CREATE TEMP TABLE concept_t AS
            WITH t AS (SELECT {_id(c("concept_id"))} AS concept_id, {c("concept_name")} AS concept_name,
                              {c("vocabulary_id")} AS vocabulary_id, {c("concept_code")} AS concept_code
                       FROM raw_concept),
            u AS (SELECT *, row_number() OVER (PARTITION BY concept_id) AS dup FROM t)
            SELECT concept_id, concept_name, vocabulary_id, concept_code,
                   {
            _problems(
                [
                    ("concept_id IS NULL", "concept_id missing or not a whole number"),
                    ("dup > 1", "duplicate concept_id (first row kept)"),
                ]
            )
        } AS problem
            FROM u""")
        _count(src.con, "concept_t", report, {"concept_name missing (named by code or id)": "concept_name IS NULL"})
        src.con.execute(
            "CREATE TEMP TABLE concept AS SELECT concept_id, concept_name, vocabulary_id, concept_code "
            "FROM concept_t WHERE problem IS NULL"
        )
    if ancestor is None:
        src.con.execute("CREATE TEMP TABLE concept_ancestor (a BIGINT, d BIGINT)")
    else:
        c = column_or_null(src, "concept_ancestor")
        src.con.execute(f"""
            CREATE TEMP TABLE ancestor_t AS
            WITH t AS (SELECT {_id(c("ancestor_concept_id"))} AS a, {_id(c("descendant_concept_id"))} AS d
                       FROM raw_concept_ancestor)
            SELECT a, d, {_problems([("a IS NULL OR d IS NULL", "concept id missing or not a whole number")])} AS problem
            FROM t""")
        _count(src.con, "ancestor_t", ancestor)
        src.con.execute("CREATE TEMP TABLE concept_ancestor AS SELECT a, d FROM ancestor_t WHERE problem IS NULL")


# Per event table: kind, date columns (first usable wins), concept, source value, source concept,
# value columns (number, text, concept) and unit columns (concept, source value).
_EVENT_TABLES: dict[str, dict[str, Any]] = {
    "condition_occurrence": dict(
        kind="diagnosis",
        dates=("condition_start_date", "condition_start_datetime"),
        concept="condition_concept_id",
        sv="condition_source_value",
        scid="condition_source_concept_id",
    ),
    "drug_exposure": dict(
        kind="medication",
        dates=("drug_exposure_start_date", "drug_exposure_start_datetime"),
        concept="drug_concept_id",
        sv="drug_source_value",
        scid="drug_source_concept_id",
    ),
    "procedure_occurrence": dict(
        kind="procedure",
        dates=("procedure_date", "procedure_datetime"),
        concept="procedure_concept_id",
        sv="procedure_source_value",
        scid="procedure_source_concept_id",
    ),
    "measurement": dict(
        kind="lab",
        dates=("measurement_date", "measurement_datetime"),
        concept="measurement_concept_id",
        sv="measurement_source_value",
        scid="measurement_source_concept_id",
        vnum="value_as_number",
        vtext="value_source_value",
        vcid="value_as_concept_id",
        ucid="unit_concept_id",
        usv="unit_source_value",
    ),
    "observation": dict(
        kind="observation",
        dates=("observation_date", "observation_datetime"),
        concept="observation_concept_id",
        sv="observation_source_value",
        scid="observation_source_concept_id",
        vnum="value_as_number",
        vtext="value_as_string",
        vcid="value_as_concept_id",
        ucid="unit_concept_id",
        usv="unit_source_value",
    ),
    "visit_occurrence": dict(
        kind="visit",
        dates=("visit_start_date", "visit_start_datetime"),
        concept="visit_concept_id",
        sv="visit_source_value",
        scid="visit_source_concept_id",
    ),
}


def _clean_events(src: OmopSource, cfg: OmopConfig, table: str, report: TableReport) -> None:
    spec = _EVENT_TABLES[table]
    c = column_or_null(src, table)
    null = "CAST(NULL AS VARCHAR)"

    def opt(key: str) -> str:
        return c(spec[key]) if key in spec else null

    outside = (
        ""
        if cfg.keep_outside_observation
        else "NOT EXISTS (SELECT 1 FROM period o WHERE o.pid = t.pid AND t.d BETWEEN o.s AND o.e)"
    )
    problems = [
        ("t.raw_pid IS NULL", "person_id missing"),
        ("t.pid IS NULL", "person_id not a whole number"),
        ("t.d IS NULL", "date missing or not a date"),
        ("p.pid IS NULL", "person not in the person table (or dropped there)"),
        ("t.d < p.birth", "dated before birth"),
        (f"t.d > DATE '{cfg.as_of}'", "dated after the as-of date"),
        (
            "(t.cid IS NULL OR t.cid = 0) AND (t.scid IS NULL OR t.scid = 0) AND t.sv IS NULL",
            "no concept and no source value",
        ),
    ]
    if outside:
        problems.append((outside, "outside every observation period"))
    # visit source values are often encounter ids, not codes: name visits by concept only
    sv = null if table == "visit_occurrence" else c(spec["sv"])
    src.con.execute(f"""
        CREATE TEMP TABLE ev_{table} AS
        WITH t AS (
            SELECT {c("person_id")} AS raw_pid, {_id(c("person_id"))} AS pid, {_date(*(c(x) for x in spec["dates"]))} AS d,
                   {_id(c(spec["concept"]))} AS cid, {sv} AS sv,
                   {_id(opt("scid"))} AS scid, TRY_CAST({opt("vnum")} AS DOUBLE) AS vnum,
                   COALESCE({opt("vtext")}, CASE WHEN TRY_CAST({opt("vnum")} AS DOUBLE) IS NULL THEN {opt("vnum")} END)
                       AS vtext, {opt("vnum")} AS vnum_raw, {_id(opt("vcid"))} AS vcid,
                   {_id(opt("ucid"))} AS ucid, {opt("usv")} AS usv
            FROM raw_{table})
        SELECT t.*, '{spec["kind"]}' AS kind, {_problems(problems)} AS problem
        FROM t LEFT JOIN person p ON p.pid = t.pid""")
    _count(
        src.con,
        f"ev_{table}",
        report,
        {
            "concept_id 0 or missing: named by its source concept or value": "cid IS NULL OR cid = 0",
            "concept_id not in the concept table: named by source concept, value or id": "cid <> 0 AND cid NOT IN (SELECT concept_id FROM concept)",
            "value_as_number not a number: kept as text": "vnum IS NULL AND vnum_raw IS NOT NULL",
        },
    )


# --------------------------------------------------------------------------- outcome (SQL)


def _outcome_records(src: OmopSource, outcome: OutcomeDefinition, summary: ImportSummary) -> None:
    con = src.con
    codes = ", ".join(f"'{x}'" for x in outcome.snomed_codes) or "NULL"
    ids = ", ".join(str(x) for x in outcome.concept_ids) or "NULL"
    con.execute(f"""
        CREATE TEMP TABLE outcome_roots AS
        SELECT concept_id AS cid FROM concept WHERE vocabulary_id = 'SNOMED' AND concept_code IN ({codes})
        UNION SELECT UNNEST([{ids}]::BIGINT[]) AS cid""")
    con.execute("DELETE FROM outcome_roots WHERE cid IS NULL")
    desc = (
        "UNION SELECT d FROM concept_ancestor WHERE a IN (SELECT cid FROM outcome_roots)"
        if outcome.include_descendants
        else ""
    )
    con.execute(f"CREATE TEMP TABLE outcome_concepts AS SELECT cid FROM outcome_roots {desc}")
    pre = [normalize_code(p) for p in outcome.icd10_prefixes]
    norm_sv = "regexp_replace(upper(sv), '[. ]', '', 'g')"
    sv_match = (
        " OR ".join(
            [f"starts_with({norm_sv}, '{p}')" for p in pre]
            + ([f"{norm_sv} IN ({codes})"] if outcome.snomed_codes else [])
        )
        or "FALSE"
    )
    icd_match = (
        " OR ".join(f"starts_with(regexp_replace(upper(concept_code), '[. ]', '', 'g'), '{p}')" for p in pre) or "FALSE"
    )
    con.execute(f"""CREATE TEMP TABLE icd_concepts AS SELECT concept_id AS cid FROM concept
                    WHERE vocabulary_id IN ('ICD10', 'ICD10CM') AND ({icd_match})""")
    con.execute(f"""
        CREATE TEMP TABLE outcome_rec AS
        SELECT pid, d,
               CASE WHEN cid IN (SELECT cid FROM outcome_concepts) THEN 'standard concept'
                    WHEN scid IN (SELECT cid FROM icd_concepts) THEN 'ICD-10 source concept'
                    ELSE 'source value' END AS route
        FROM ev_condition_occurrence
        WHERE problem IS NULL AND (cid IN (SELECT cid FROM outcome_concepts)
              OR scid IN (SELECT cid FROM icd_concepts) OR ({sv_match}))""")
    n_roots = con.execute("SELECT count(*) FROM outcome_roots").fetchone()[0]
    n_all = con.execute("SELECT count(*) FROM outcome_concepts").fetchone()[0]
    routes = dict(con.execute("SELECT route, count(*) FROM outcome_rec GROUP BY route").fetchall())
    summary.outcome = {
        "name": outcome.name,
        "standard_concepts": n_roots,
        "with_descendants": n_all,
        "icd10_source_concepts": con.execute("SELECT count(*) FROM icd_concepts").fetchone()[0],
        "records": sum(routes.values()),
        "records_by_route": routes,
        "persons_with_a_record": con.execute("SELECT count(DISTINCT pid) FROM outcome_rec").fetchone()[0],
    }


# --------------------------------------------------------------------------- index and labels (Python)


@dataclass(slots=True)
class Candidate:
    """One person's inputs to the index rule and the labelling."""

    pid: int
    birth: dt.date
    sex: str
    periods: list[tuple[dt.date, dt.date]]
    death: dt.date | None = None
    outcome_dates: list[dt.date] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)


def place_index(c: Candidate, rule: IndexRule) -> tuple[dt.date | None, tuple[dt.date, dt.date] | None, str | None]:
    """The index date and its observation period, or the reason the person has none."""
    fixed = rule.fixed_date
    if fixed is not None:
        period = next((p for p in c.periods if p[0] <= fixed <= p[1]), None)
        if period is None:
            return None, None, "not observed on the fixed index date"
        if _age_reached(c.birth, rule.min_age) > fixed:
            return None, None, f"younger than {rule.min_age:g} on the index date"
        if add_years(period[0], rule.min_history_years) > fixed:
            return None, None, f"less than {rule.min_history_years:g} years of observation before the index date"
        return fixed, period, None
    old_enough = _age_reached(c.birth, rule.min_age)
    for period in sorted(c.periods):
        index = max(add_years(period[0], rule.min_history_years), old_enough)
        if index <= period[1]:
            return index, period, None
    if all(p[1] < old_enough for p in c.periods):
        return None, None, f"never observed at age {rule.min_age:g} or older"
    return None, None, f"never {rule.min_history_years:g} years of observation at age {rule.min_age:g} or older"


def label_person(
    c: Candidate, index: dt.date, period: tuple[dt.date, dt.date], window_years: float
) -> tuple[int | None, dt.date | None, str | None]:
    """(label, outcome date, exclusion reason) for a person with an index date.

    - an outcome record on or before the index date: excluded (prevalent case);
    - death on or before the index date: excluded;
    - first outcome record in (index, index + window]: case, label 1;
    - otherwise a control (label 0) when observed through the whole window
      (the index date's observation period ends on or after the window's end)
      or dead within the window without an outcome record;
    - otherwise censored: excluded, since the outcome is unknown.
    """
    if c.outcome_dates and min(c.outcome_dates) <= index:
        return None, None, "outcome recorded on or before the index date"
    if c.death is not None and c.death <= index:
        return None, None, "died on or before the index date"
    end = add_years(index, window_years)
    first = min(c.outcome_dates) if c.outcome_dates else None
    if first is not None and first <= end:
        return 1, first, None
    if period[1] >= end or (c.death is not None and c.death <= end):
        return 0, None, None
    return None, None, "censored"


def _candidates(con: Any) -> Iterator[Candidate]:
    periods: dict[int, list[tuple[dt.date, dt.date]]] = {}
    for pid, s, e in con.execute("SELECT pid, s, e FROM period ORDER BY pid, s").fetchall():
        periods.setdefault(pid, []).append((s, e))
    deaths = dict(con.execute("SELECT pid, d FROM death").fetchall())
    outcomes: dict[int, list[dt.date]] = {}
    for pid, d in con.execute("SELECT pid, d FROM outcome_rec ORDER BY pid, d").fetchall():
        outcomes.setdefault(pid, []).append(d)
    for pid, birth, sex, race, ethnicity in con.execute(
        "SELECT pid, birth, sex, race, ethnicity FROM person ORDER BY pid"
    ).fetchall():
        yield Candidate(
            pid,
            birth,
            sex,
            periods.get(pid, []),
            deaths.get(pid),
            outcomes.get(pid, []),
            {"race": race, "ethnicity": ethnicity},
        )


# --------------------------------------------------------------------------- events -> patients


def _event(kind: str, d: dt.date, code: str, system: str, name: str, value: Any, unit: str | None) -> Event:
    if kind == "lab" and (code in VITAL_CODES or _VITAL_WORDS.search(name)):
        kind = "vital"
    return Event(date=d, kind=cast(EventKind, kind), code=code, system=system, name=name, value=value, unit=unit)


_NAMED_EVENTS = """
    SELECT e.pid, e.d, e.kind,
           COALESCE(NULLIF(c1.concept_code, ''), CAST(c1.concept_id AS VARCHAR), NULLIF(c2.concept_code, ''), e.sv,
                    CAST(NULLIF(e.cid, 0) AS VARCHAR)) AS code,
           CASE WHEN c1.concept_id IS NOT NULL THEN COALESCE(c1.vocabulary_id, 'OMOP')
                WHEN c2.concept_id IS NOT NULL THEN COALESCE(c2.vocabulary_id, 'OMOP')
                WHEN e.sv IS NOT NULL THEN 'source' ELSE 'OMOP' END AS system,
           COALESCE(c1.concept_name, c2.concept_name, e.sv, 'OMOP concept ' || CAST(e.cid AS VARCHAR)) AS name,
           e.vnum, COALESCE(c3.concept_name, e.vtext) AS vtext, COALESCE(NULLIF(c4.concept_code, ''), e.usv) AS unit
    FROM ev e
    LEFT JOIN concept c1 ON c1.concept_id = e.cid AND e.cid <> 0
    LEFT JOIN concept c2 ON c2.concept_id = e.scid AND e.scid <> 0
    LEFT JOIN concept c3 ON c3.concept_id = e.vcid AND e.vcid <> 0
    LEFT JOIN concept c4 ON c4.concept_id = e.ucid AND e.ucid <> 0
"""


def _write_temp_csv(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    fd, path = tempfile.mkstemp(prefix="icl-omop-", suffix=".csv")
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def prepare_cohort(src: OmopSource, config: OmopConfig | None = None) -> OmopCohort:
    """Clean, name, find outcomes, place index dates and label (see the module docstring for the steps).

    Args:
        src: from :func:`~icl_toolkit.data.omop.source.open_source` (keep it open while reading the result).
        config: window, index rule, outcome definition, as-of date.

    Returns:
        The selected persons with their labels and the summary; iterate it for the
        patients with their events, streamed (memory holds one patient at a time).
    """
    cfg = config or OmopConfig()
    con = src.con
    summary = ImportSummary(src.location, src.kind)
    summary.missing_tables = [
        t + (f" ({src.skipped[t]})" if t in src.skipped else "") for t in OPTIONAL_TABLES if not src.has(t)
    ]
    by_file: dict[str, int] = {}
    for r in src.rejected:
        by_file[r.table] = by_file.get(r.table, 0) + 1
        if sum(by_file.values()) <= 20:
            summary.notes.append(f"unreadable line {r.file}:{r.line}: {r.error}")

    def report(table: str) -> TableReport:
        rep = summary.tables[table] = TableReport(src.tables[table], rejected=by_file.get(table, 0))
        return rep

    def optional(table: str) -> TableReport | None:
        return report(table) if src.has(table) else None

    _clean_concepts(src, optional("concept"), optional("concept_ancestor"))
    _clean_persons(src, cfg, report("person"))  # person and observation_period are required
    _clean_periods(src, cfg, report("observation_period"))
    _clean_death(src, cfg, optional("death"))
    present = [t for t in _EVENT_TABLES if src.has(t)]
    for table in present:
        _clean_events(src, cfg, table, report(table))
    con.execute(
        "CREATE TEMP VIEW ev AS "
        + " UNION ALL ".join(
            f"SELECT pid, d, kind, cid, sv, scid, vnum, vtext, vcid, ucid, usv FROM ev_{t} WHERE problem IS NULL"
            for t in present
        )
    )
    _outcome_records(src, cfg.outcome, summary)

    chosen: list[tuple[Candidate, dt.date, tuple[dt.date, dt.date], int, dt.date | None]] = []
    for cand in _candidates(con):
        summary.subjects += 1
        if not cand.periods:
            summary.exclude("no usable observation period")
            continue
        index, period, why = place_index(cand, cfg.index)
        if why is None and index is not None and period is not None:
            if index > cfg.as_of:
                why = "index date after the as-of date"
            else:
                label, outcome_date, why = label_person(cand, index, period, cfg.window_years)
        if why is not None or index is None or period is None or label is None:
            if why == "censored":
                summary.censored += 1
            summary.exclude(why or "no index date")
            continue
        chosen.append((cand, index, period, label, outcome_date))
    summary.cases = sum(1 for x in chosen if x[3] == 1)
    summary.cases_dated = sum(1 for x in chosen if x[3] == 1 and x[4] is not None)
    summary.controls = len(chosen) - summary.cases

    path = _write_temp_csv([(c.pid, index) for c, index, *_ in chosen], ("pid", "index_date"))
    try:
        con.execute(
            f"CREATE TEMP TABLE cohort AS SELECT CAST(pid AS BIGINT) AS pid, CAST(index_date AS DATE) AS index_date "
            f"FROM read_csv('{path}', header=true, all_varchar=true)"
        )
    finally:
        os.unlink(path)
    summary.events_after_index = con.execute(
        "SELECT count(*) FROM ev JOIN cohort USING (pid) WHERE ev.d > cohort.index_date"
    ).fetchone()[0]

    return OmopCohort(con, chosen, summary)


@dataclass
class OmopCohort:
    """The selected persons, ready to be read as patients one at a time (events streamed from DuckDB).

    ``labels`` is known before iterating (for splits); the summary's event counts
    are complete once iteration has finished.
    """

    con: Any
    chosen: list[tuple[Candidate, dt.date, tuple[dt.date, dt.date], int, dt.date | None]]
    summary: ImportSummary

    @property
    def labels(self) -> list[int]:
        return [c[3] for c in self.chosen]

    def __len__(self) -> int:
        return len(self.chosen)

    def _rows(self) -> Iterator[tuple[Any, ...]]:
        cur = self.con.execute(
            f"SELECT n.* FROM ({_NAMED_EVENTS}) n JOIN cohort k ON k.pid = n.pid "
            # every column, so that ties cannot come out in another order on the next run
            "WHERE n.d <= k.index_date ORDER BY n.pid, n.d, n.kind, n.code, n.system, n.name, "
            "n.vnum, n.vtext, n.unit"
        )
        while rows := cur.fetchmany(50_000):
            yield from rows

    def __iter__(self) -> Iterator[Patient]:
        summary = self.summary
        summary.events_written, summary.no_history = {}, 0
        rows = self._rows()
        row = next(rows, None)
        for cand, index, period, label, outcome_date in self.chosen:  # both ordered by person id
            evs: list[Event] = []
            while row is not None and row[0] <= cand.pid:
                pid, d, kind, code, system, name, vnum, vtext, unit = row
                if pid == cand.pid:
                    value: Any = vnum if vnum is not None else vtext
                    ev = _event(kind, d, code, system, name, value, unit if value is not None else None)
                    evs.append(ev)
                    summary.event(ev.kind)
                row = next(rows, None)
            if not evs:
                summary.no_history += 1
            yield Patient(
                patient_id=str(cand.pid),
                sex=cast(Sex, cand.sex),
                birth_date=cand.birth,
                index_date=index,
                events=evs,
                label=cast(Label, label),
                outcome_date=outcome_date,
                groups=cand.groups,
                metadata={
                    "source": "omop",
                    "observation_start": period[0].isoformat(),
                    "observation_end": period[1].isoformat(),
                },
            )


def build_cohort(src: OmopSource, config: OmopConfig | None = None) -> tuple[list[Patient], ImportSummary]:
    """:func:`prepare_cohort`, read into a list: the patients (ordered by person id) and the summary."""
    cohort = prepare_cohort(src, config)
    patients = list(cohort)
    return patients, cohort.summary
