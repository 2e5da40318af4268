from __future__ import annotations

import json
from pathlib import Path

import pytest

from icl_toolkit.core.errors import CohortValidationError
from icl_toolkit.data.cohort import Event, Patient, read_cohort, validate_cohort, write_cohort

GOOD = {
    "patient_id": "P1", "sex": "F", "birth_date": "1940-05-01", "index_date": "2019-01-01",
    "events": [
        {"date": "2015-02-03", "kind": "diagnosis", "code": "I10", "system": "ICD10CM",
         "name": "Essential (primary) hypertension"},
        {"date": "2018-06-01", "kind": "lab", "code": "4548-4", "system": "LOINC", "name": "HbA1c",
         "value": 7.1, "unit": "%"},
    ],
    "label": 1, "outcome_date": "2021-03-04",
    "rationales": {"free_text": "Hypertension (I10) since 2015-02-03.", "stepwise": "Step 1: I10."},
    "split": "train", "metadata": {"true_risk": 0.2},
}


def _with(**changes):
    rec = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is KeyError:
            rec.pop(key)
        else:
            rec[key] = value
    return json.dumps(rec)


def _event(**changes):
    ev = dict(GOOD["events"][1])
    ev.update(changes)
    return _with(events=[ev])


# Each bad case: a line, the field path its message must name, and words the message must contain.
BAD_CASES = [
    ("not json at all", "-", "invalid JSON"),
    ("[1, 2, 3]", "-", "JSON object"),
    (_with(patient_id=KeyError), "patient_id", "required field is missing"),
    (_with(patient_id=""), "patient_id", "non-empty string"),
    (_with(patient_id=17), "patient_id", "found 17"),
    (_with(sex="female"), "sex", "'F', 'M' or 'U', found 'female'"),
    (_with(birth_date="1940-13-01"), "birth_date", "found '1940-13-01'"),
    (_with(index_date="01/02/2019"), "index_date", "found '01/02/2019'"),
    (_with(index_date="1939-01-01"), "index_date", "after birth_date 1940-05-01"),
    (_with(events={}), "events", "array"),
    (_event(kind="labs"), "events[0].kind", "found 'labs'"),
    (_event(code=""), "events[0].code", "non-empty string"),
    (_event(value=True), "events[0].value", "a number, a string or null, found true"),
    (_event(date="1930-01-01"), "events[0].date", "on or after birth_date"),
    (_event(unit=5), "events[0].unit", "found 5"),
    (_event(extra="x"), "events[0].extra", "unknown field"),
    (_with(label=2), "label", "0 or 1, found 2"),
    (_with(label="1"), "label", "found '1'"),
    (_with(outcome_date="2018-01-01"), "outcome_date", "after index_date 2019-01-01"),
    (_with(split="training"), "split", "found 'training'"),
    (_with(rationales={"free_text": 3}), "rationales.free_text", "found 3"),
    (_with(metadata=[1]), "metadata", "found [1]"),
    (_with(colour="blue"), "colour", "unknown field"),
]


@pytest.mark.parametrize("line,field,words", BAD_CASES, ids=[c[1] + ":" + c[2][:20] for c in BAD_CASES])
def test_each_bad_case_gets_its_own_message_and_line(tmp_path: Path, line: str, field: str, words: str) -> None:
    path = tmp_path / "c.jsonl"
    good2 = _with(patient_id="P2")
    path.write_text(good2 + "\n" + line + "\n")
    report = validate_cohort(path)
    assert not report.ok
    mine = [i for i in report.issues if i.field == field]
    assert mine, [str(i) for i in report.issues]
    assert all(i.line == 2 for i in report.issues), [str(i) for i in report.issues]
    assert any(words in i.message for i in mine), [str(i) for i in mine]
    # the record as a whole (field "-") is said without a placeholder: FILE:LINE: message
    assert str(mine[0]).startswith(f"{path}:2: {field}: " if field != "-" else f"{path}:2: expected")


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [GOOD and json.dumps(GOOD)] + [case[0] for case in BAD_CASES]
    path.write_text("\n".join(lines) + "\n")
    report = validate_cohort(path)
    bad_lines = {i.line for i in report.issues}
    # every bad case line (2 .. n+1) is reported; the duplicates of P1 are reported too
    assert bad_lines == set(range(2, len(BAD_CASES) + 2))
    assert report.n_valid == 1
    with pytest.raises(CohortValidationError) as exc:
        read_cohort(path)
    assert len(exc.value.issues) == len(report.issues)


def test_duplicate_patient_ids_name_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), _with(patient_id="P2"), json.dumps(GOOD)]) + "\n")
    issues = validate_cohort(path).issues
    assert [str(i) for i in issues] == [f"{path}:3: patient_id: expected a unique id, found 'P1' already used on line 1"]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    report = validate_cohort(empty)
    assert not report.ok and "empty file" in report.issues[0].message
    with pytest.raises(CohortValidationError, match="file not found"):
        read_cohort(tmp_path / "nope.jsonl")


def test_invalid_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"patient_id": "\xff"}\n')
    issues = validate_cohort(path).issues
    assert len(issues) == 1 and issues[0].line == 2 and "UTF-8" in issues[0].message


def test_round_trip_preserves_records(tmp_path: Path, small_cohort) -> None:
    path = tmp_path / "c.jsonl"
    assert write_cohort(small_cohort, path) == len(small_cohort)
    back = read_cohort(path)
    assert back == small_cohort
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) >= {"patient_id", "sex", "birth_date", "index_date", "events", "label", "outcome_date"}


def test_events_after_index_are_valid_but_not_history(tmp_path: Path) -> None:
    rec = json.loads(json.dumps(GOOD))
    rec["events"].append({"date": "2020-01-01", "kind": "diagnosis", "code": "G30.9", "system": "ICD10CM",
                          "name": "Alzheimer's disease, unspecified"})
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    report = validate_cohort(path)
    assert report.ok and report.n_events_after_index == 1
    (p,) = read_cohort(path)
    assert all(e.date <= p.index_date for e in p.history()) and len(p.history()) == 2


def test_interrupted_write_leaves_the_old_file_and_no_temp(tmp_path: Path, small_cohort) -> None:
    path = tmp_path / "c.jsonl"
    write_cohort(small_cohort[:5], path)
    before = path.read_bytes()

    def patients():
        yield from small_cohort[:50]
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C half way

    with pytest.raises(KeyboardInterrupt):
        write_cohort(patients(), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_patient_history_is_sorted_and_cut() -> None:
    import datetime as dt

    p = Patient("X", "M", dt.date(1950, 1, 1), dt.date(2020, 1, 1), [
        Event(dt.date(2019, 5, 1), "visit", "99213", "CPT", "Office visit"),
        Event(dt.date(2021, 5, 1), "diagnosis", "G30.9", "ICD10CM", "Alzheimer's disease"),
        Event(dt.date(2010, 5, 1), "diagnosis", "I10", "ICD10CM", "Hypertension"),
        Event(dt.date(2020, 1, 1), "lab", "4548-4", "LOINC", "HbA1c", 6.0, "%"),
    ])
    assert [e.date.year for e in p.history()] == [2010, 2019, 2020]
    assert round(p.age_at_index) == 70
