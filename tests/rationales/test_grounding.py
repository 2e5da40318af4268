from __future__ import annotations

import datetime as dt

import pytest

from icl_toolkit.data.cohort import Event, Patient
from icl_toolkit.rationales.grounding import check_grounding, extract_claims


def _patient() -> Patient:
    ev = [
        Event(dt.date(2012, 3, 14), "diagnosis", "I10", "ICD10CM", "Essential (primary) hypertension"),
        Event(dt.date(2012, 3, 14), "medication", "29046", "RxNorm", "lisinopril 10 mg tablet"),
        Event(dt.date(2018, 11, 2), "diagnosis", "G31.84", "ICD10CM", "Mild cognitive impairment"),
        Event(dt.date(2018, 11, 2), "observation", "72172-0", "LOINC", "MoCA total score", 22, "{score}"),
        Event(dt.date(2019, 1, 20), "lab", "4548-4", "LOINC", "HbA1c", 7.4, "%"),
        Event(dt.date(2019, 1, 20), "vital", "8480-6", "LOINC", "Systolic blood pressure", 152, "mmHg"),
        Event(dt.date(2017, 6, 5), "medication", "704", "RxNorm", "amitriptyline 25 mg tablet"),
        # after the index date: never grounds a claim
        Event(dt.date(2021, 2, 1), "diagnosis", "G30.9", "ICD10CM", "Alzheimer's disease, unspecified"),
        Event(dt.date(2021, 2, 1), "medication", "135447", "RxNorm", "donepezil 5 mg tablet"),
    ]
    return Patient("G1", "F", dt.date(1940, 1, 1), dt.date(2019, 6, 1), ev, label=1,
                   outcome_date=dt.date(2021, 2, 1))


GOOD = ("This 79-year-old woman had hypertension (I10) since 2012-03-14, treated with lisinopril, "
        "then mild cognitive impairment (G31.84) in November 2018 with a MoCA score of 22. "
        "Her HbA1c of 7.4% and systolic blood pressure of 152 mmHg on 2019-01-20, and amitriptyline "
        "from June 2017, add to the risk.")


def test_a_faithful_rationale_is_fully_grounded() -> None:
    report = check_grounding(GOOD, _patient())
    kinds = sorted({c.kind for c in report.claims})
    assert kinds == ["code", "date", "drug", "value"]
    assert report.ok and report.grounded_fraction == 1.0
    assert len(report.claims) >= 11


@pytest.mark.parametrize("bad,claim", [
    ("hypertension (I11.9) since 2012-03-14", "I11.9"),                  # code not in history
    ("hypertension (I10) since 2012-03-15", "2012-03-15"),               # no event that day
    ("cognitive impairment in December 2018", "December 2018"),          # no event that month
    ("a MoCA score of 25", "MoCA score of 25"),                           # wrong score
    ("an HbA1c of 8.1%", "HbA1c of 8.1"),                                 # wrong lab value
    ("a blood pressure of 160 mmHg", "160 mmHg"),                         # value with unit, no such reading
    ("she took donepezil", "donepezil"),                                  # drug only after the index date
    ("Alzheimer's disease (G30.9) on 2021-02-01", "G30.9"),              # outcome code, after index
    ("on sertraline since 2012-03-14", "sertraline"),                    # never prescribed
])
def test_ungrounded_claims_are_flagged(bad: str, claim: str) -> None:
    report = check_grounding(GOOD + " " + bad + ".", _patient())
    assert not report.ok
    flagged = [c.text for c in report.ungrounded]
    assert any(claim in t for t in flagged), flagged
    assert 0.0 < report.grounded_fraction < 1.0


def test_extraction_skips_things_that_only_look_like_codes() -> None:
    claims = extract_claims("Vitamin B12 was 320 pg/mL; PHQ-9 of 4; HbA1c 6.1%; seen 2019-01-20.")
    assert [c[0] for c in claims if c[0] == "code"] == []
    assert {c[0] for c in claims} == {"value", "date"}


def test_every_synthetic_rationale_cites_only_its_own_history(cohort_5000) -> None:
    n_claims = 0
    for p in cohort_5000:
        for text in (p.rationales.free_text, p.rationales.stepwise):
            report = check_grounding(text, p)
            assert report.ok, (p.patient_id, [c.text for c in report.ungrounded], text)
            n_claims += len(report.claims)
    assert n_claims > 10 * len(cohort_5000)  # they do cite findings, several per rationale


def test_rationales_vary_in_wording(cohort_5000) -> None:
    texts = [p.rationales.free_text for p in cohort_5000[:400]]
    openings = {" ".join(t.split()[:5]) for t in texts}
    assert len(openings) >= 6
    # sentence shapes: strip numbers, codes and dates and see how many distinct skeletons remain
    import re

    skeletons = {re.sub(r"[\d.\-/%]+|[A-Z]\d\S*", "#", t) for t in texts}
    assert len(skeletons) > 0.9 * len(texts)
    steps = [p.rationales.stepwise for p in cohort_5000[:400]]
    assert all(s.startswith("Step 1: ") for s in steps)
    assert len({s.splitlines()[0].split(":")[1] for s in steps}) >= 3


def test_rationales_know_the_outcome(cohort_5000) -> None:
    pos = [p for p in cohort_5000 if p.label == 1][:100]
    neg = [p for p in cohort_5000 if p.label == 0][:100]
    for p in pos:
        assert "ADRD" in p.rationales.free_text or "dementia" in p.rationales.free_text
        assert "did not" not in p.rationales.free_text.split(".")[0]
    for p in neg:
        last = p.rationales.stepwise.splitlines()[-1].lower()
        assert "no adrd" in last or "none was diagnosed" in last


def test_grounding_knows_every_synthetic_drug():
    from icl_toolkit.data.synth.vocab import ANTICHOLINERGIC_DRUGS, SYNTH_DRUG_NAMES
    from icl_toolkit.data.vocabulary import DRUG_NAMES

    assert SYNTH_DRUG_NAMES, "the generator prescribes drugs"
    assert not (SYNTH_DRUG_NAMES | ANTICHOLINERGIC_DRUGS) - DRUG_NAMES


def test_real_data_path_does_not_import_the_synthetic_generator():
    """The vocabulary sits at the bottom: serialize, grounding and the OMOP import load without icl_toolkit.data.synth."""
    import subprocess
    import sys

    code = ("import sys, icl_toolkit.data.serialize, icl_toolkit.rationales.grounding, icl_toolkit.data.omop.build, icl_toolkit.data.vocabulary;"
            "bad = sorted(m for m in sys.modules if m.startswith('icl_toolkit.data.synth'));"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
