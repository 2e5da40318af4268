"""Teacher-written rationales: prompts, grounding on a fixed example, drop policy, resumable CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icl_toolkit.cli import app
from icl_toolkit.data.cohort import Event, Patient, Rationales, read_cohort, write_cohort
from icl_toolkit.rationales.config import TeacherConfig
from icl_toolkit.rationales.grounding import check_grounding
from icl_toolkit.rationales.teacher import RationaleTeacher, TeacherRecord, apply_rationales


def _omop_like_patient(pid: str = "42", label: int = 1) -> Patient:
    """A patient as `icl data from-omop` writes one: SNOMED, RxNorm and LOINC codes."""
    d = dt.date
    return Patient(
        patient_id=pid, sex="F", birth_date=d(1940, 3, 1), index_date=d(2015, 1, 1), label=label,
        outcome_date=d(2017, 6, 1) if label else None,
        events=[
            Event(d(2009, 5, 4), "diagnosis", "44054006", "SNOMED", "Type 2 diabetes mellitus"),
            Event(d(2010, 2, 1), "diagnosis", "38341003", "SNOMED", "Hypertensive disorder"),
            Event(d(2012, 8, 9), "medication", "860975", "RxNorm", "metformin hydrochloride 500 MG Oral Tablet"),
            Event(d(2014, 6, 2), "lab", "4548-4", "LOINC", "Hemoglobin A1c/Hemoglobin.total in Blood", 7.9, "%"),
            Event(d(2014, 6, 2), "vital", "8480-6", "LOINC", "Systolic blood pressure", 152.0, "mm[Hg]"),
            # after the index date: never shown, never grounding anything
            Event(d(2016, 1, 1), "medication", "997223", "RxNorm", "donepezil hydrochloride 10 MG Oral Tablet"),
            Event(d(2017, 6, 1), "diagnosis", "26929004", "SNOMED", "Alzheimer's disease"),
        ])


def test_grounding_on_a_fixed_example():
    p = _omop_like_patient()
    text = ("Type 2 diabetes (SNOMED 44054006) since May 2009, treated with metformin from 2012-08-09; "
            "HbA1c 7.9% (LOINC 4548-4) and systolic pressure 152 mmHg in June 2014. "
            "She later started donepezil and had Alzheimer's disease (26929004) on 2017-06-01; "
            "an HbA1c of 9.1 and atrial fibrillation (I48.0) are also invented here.")
    report = check_grounding(text, p)
    by_text = {c.text: c.grounded for c in report.claims}
    for cited in ("44054006", "May 2009", "metformin", "2012-08-09", "4548-4", "June 2014"):
        assert by_text[cited] is True, cited
    # after the index date or absent from the record
    for cited in ("donepezil", "26929004", "2017-06-01", "I48.0"):
        assert by_text[cited] is False, cited
    values = {c.text: c.grounded for c in report.claims if c.kind == "value"}
    assert any(t.startswith("HbA1c 7.9") and ok for t, ok in values.items())
    assert any("9.1" in t and not ok for t, ok in values.items())
    assert values["systolic pressure 152"] is True  # matched by the measurement's name (units differ: mm[Hg])
    assert 0.0 < report.grounded_fraction < 1.0
    assert {c.kind for c in report.ungrounded} >= {"code", "drug", "date", "value"}


class ScriptedBackend:
    """A backend that answers every teacher prompt of a style with the same given text."""

    def __init__(self, tokenizer, texts: dict[str, str]):
        self.tokenizer, self.texts, self.model_id, self.max_context = tokenizer, texts, "scripted", 8192
        self.progress = False
        self.prompts: list[str] = []

    def generate(self, prompts, params=None):
        self.prompts.extend(prompts)
        return [self.texts["stepwise" if "step by step" in p else "free_text"] for p in prompts]

    def score(self, prompts, choices):  # pragma: no cover - the teacher never scores
        raise NotImplementedError


def test_teacher_prompts_hold_the_history_and_the_known_outcome(lm_tokenizer):
    teacher = RationaleTeacher(ScriptedBackend(lm_tokenizer, {}), TeacherConfig())
    case, control = _omop_like_patient("1", 1), _omop_like_patient("2", 0)
    p = teacher.prompt(case, "free_text")
    assert "Type 2 diabetes mellitus" in p
    assert "WAS diagnosed" in p and "was NOT" not in p
    assert "was NOT diagnosed" in teacher.prompt(control, "free_text")
    # nothing after the index date reaches the teacher
    assert "donepezil" not in p and "Alzheimer's disease (" not in p and "26929004" not in p
    assert "step by step" in teacher.prompt(case, "stepwise") and "Conclusion: ADRD expected" in teacher.prompt(case, "stepwise")
    case.label = None
    with pytest.raises(ValueError, match="no label"):
        teacher.prompt(case, "free_text")


def test_generate_checks_grounding_and_drops_ungrounded(lm_tokenizer):
    patients = [_omop_like_patient("1", 1), _omop_like_patient("2", 0)]
    good = "Reasoning: Diabetes since May 2009 on metformin, HbA1c 7.9 in June 2014: vascular risk."
    bad = "She takes donepezil (started 2016-01-01) and has code I48.0."
    backend = ScriptedBackend(lm_tokenizer, {"free_text": good, "stepwise": bad})
    teacher = RationaleTeacher(backend, TeacherConfig())
    records = teacher.generate(patients)
    assert len(backend.prompts) == 4  # one batched call: 2 patients x 2 styles
    r = records[0]
    assert r.texts["free_text"].startswith("Diabetes")  # the "Reasoning:" lead is cut
    assert r.grounding["free_text"]["ungrounded"] == []
    assert {c["kind"] for c in r.grounding["stepwise"]["ungrounded"]} == {"drug", "date", "code"}

    kept, summary = apply_rationales(patients, records, drop_ungrounded=False)
    assert all(p.rationales.stepwise == bad for p in kept)
    dropped, summary = apply_rationales(patients, records, drop_ungrounded=True)
    assert all(p.rationales.free_text and p.rationales.stepwise is None for p in dropped)
    s = summary["stepwise"]
    assert (s.rationales, s.dropped, s.fully_grounded, s.grounded_fraction) == (2, 2, 0, 0.0)
    f = summary["free_text"]
    assert f.grounded_fraction == 1.0 and f.claims == 2 * 4 and f.fully_grounded == 2
    assert dropped[0].metadata["rationale_grounding"]["stepwise"]["claims"] == 3
    # a lenient threshold keeps a partly grounded rationale
    half = TeacherRecord("1", {"free_text": "metformin and donepezil"},
                         {"free_text": {"claims": 2, "ungrounded": [{"kind": "drug", "text": "donepezil"}]}})
    out, _ = apply_rationales(patients[:1], [half], drop_ungrounded=True, min_grounded=0.5)
    assert out[0].rationales.free_text == "metformin and donepezil"


def test_styles_not_written_keep_the_records_own():
    p = _omop_like_patient("1", 1)
    p.rationales = Rationales(free_text="old free text", stepwise="old steps")
    rec = TeacherRecord("1", {"free_text": "Diabetes since May 2009."}, {"free_text": {"claims": 1, "ungrounded": []}})
    (out,), _ = apply_rationales([p], [rec])
    assert (out.rationales.free_text, out.rationales.stepwise) == ("Diabetes since May 2009.", "old steps")


def test_cli_generates_resumes_and_reports(tmp_path: Path, tiny_model_dir):
    cohort = tmp_path / "cohort.jsonl"
    patients = [_omop_like_patient(str(i), i % 2) for i in range(5)]
    patients.append(Patient(patient_id="u", sex="M", birth_date=dt.date(1940, 1, 1), index_date=dt.date(2015, 1, 1),
                            events=[], label=None))
    write_cohort(patients, cohort)
    out = tmp_path / "with_rationales.jsonl"
    args = ["rationales", "generate", "--cohort", str(cohort), "--out", str(out), "--model", str(tiny_model_dir),
            "--max-new-tokens", "16", "--chunk-size", "2"]
    r = CliRunner().invoke(app, args + ["--limit", "3"])
    assert r.exit_code == 0, r.output
    gens = out.with_name(out.name + ".generations.jsonl")
    assert [json.loads(x)["patient_id"] for x in gens.read_text().splitlines()] == ["0", "1", "2"]
    # an existing run needs --resume or --overwrite; --resume does only the rest
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "--resume" in str(r.exception or r.output)
    r = CliRunner().invoke(app, args + ["--resume"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in gens.read_text().splitlines()]
    assert [x["patient_id"] for x in lines] == ["0", "1", "2", "3", "4"]
    assert all(set(x["texts"]) == {"free_text", "stepwise"} for x in lines)
    result = read_cohort(out)
    assert [p.patient_id for p in result] == ["0", "1", "2", "3", "4", "u"]
    assert result[-1].rationales is None  # unlabelled: no teacher
    assert "grounding of 5 patients' rationales" in r.output and "1 unlabelled left without" in r.output
    # other settings cannot resume these generations
    r = CliRunner().invoke(app, args + ["--resume", "--styles", "free_text"])
    assert r.exit_code != 0
