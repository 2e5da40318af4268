"""Clinical vocabulary shared by every data path: code records, measurement tables and a drug lexicon.

This module sits at the bottom of the layout: it imports nothing from the
toolkit. The serializer (measurement display and flags), the grounding check
(measurement names, units and drug names a rationale may cite), the OMOP import
(which measurements are vital signs) and the synthetic generator all read it;
none of them depends on another for it.

Codes are real code-system identifiers (LOINC for labs, vitals and scored
assessments). The reference ranges are the usual adult cut-offs used to flag a
value as high or low in text; they are display aids, not clinical advice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Code", "MeasureSpec", "loinc", "MEASURES", "MEASURE_BY_CODE", "VITAL_CODES", "DRUG_NAMES", "drug_stem"]


@dataclass(frozen=True, slots=True)
class Code:
    """A code in a code system, with its display name."""

    code: str
    system: str
    name: str


def loinc(code: str, name: str) -> Code:
    return Code(code, "LOINC", name)


@dataclass(frozen=True, slots=True)
class MeasureSpec:
    """A lab, vital sign or scored assessment and how its value is shown."""

    key: str
    kind: str  # lab | vital | observation
    code: Code
    unit: str
    decimals: int
    low: float | None = None  # below this is flagged low
    high: float | None = None  # above this is flagged high
    short: str = ""  # short display name in text ("HbA1c")
    aliases: tuple[str, ...] = field(default=())


MEASURES: dict[str, MeasureSpec] = {
    m.key: m
    for m in (
        MeasureSpec(
            "hba1c",
            "lab",
            loinc("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
            "%",
            1,
            None,
            6.4,
            "HbA1c",
            ("A1c", "hemoglobin A1c"),
        ),
        MeasureSpec(
            "ldl",
            "lab",
            loinc("13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation"),
            "mg/dL",
            0,
            None,
            159,
            "LDL",
            ("LDL cholesterol", "LDL-C"),
        ),
        MeasureSpec(
            "egfr",
            "lab",
            loinc("98979-8", "Glomerular filtration rate/1.73 sq M.predicted [CKD-EPI 2021]"),
            "mL/min/1.73m2",
            0,
            60,
            None,
            "eGFR",
            (),
        ),
        MeasureSpec(
            "tsh",
            "lab",
            loinc("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma"),
            "mIU/L",
            2,
            0.4,
            4.5,
            "TSH",
            (),
        ),
        MeasureSpec(
            "b12",
            "lab",
            loinc("2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma"),
            "pg/mL",
            0,
            200,
            None,
            "vitamin B12",
            ("B12",),
        ),
        MeasureSpec(
            "hemoglobin",
            "lab",
            loinc("718-7", "Hemoglobin [Mass/volume] in Blood"),
            "g/dL",
            1,
            12.0,
            None,
            "hemoglobin",
            (),
        ),
        MeasureSpec(
            "sbp",
            "vital",
            loinc("8480-6", "Systolic blood pressure"),
            "mmHg",
            0,
            None,
            139,
            "systolic blood pressure",
            ("systolic BP", "systolic pressure", "SBP"),
        ),
        MeasureSpec(
            "dbp",
            "vital",
            loinc("8462-4", "Diastolic blood pressure"),
            "mmHg",
            0,
            None,
            89,
            "diastolic blood pressure",
            ("diastolic BP", "DBP"),
        ),
        MeasureSpec(
            "bmi",
            "vital",
            loinc("39156-5", "Body mass index (BMI) [Ratio]"),
            "kg/m2",
            1,
            18.5,
            29.9,
            "BMI",
            ("body mass index",),
        ),
        MeasureSpec(
            "moca",
            "observation",
            loinc("72172-0", "Montreal Cognitive Assessment [MoCA] total score"),
            "{score}",
            0,
            26,
            None,
            "MoCA",
            ("MoCA score",),
        ),
        MeasureSpec(
            "phq9",
            "observation",
            loinc("44261-6", "Patient Health Questionnaire 9 item (PHQ-9) total score"),
            "{score}",
            0,
            None,
            9,
            "PHQ-9",
            (),
        ),
        MeasureSpec(
            "auditc", "observation", loinc("75626-2", "Total score [AUDIT-C]"), "{score}", 0, None, 4, "AUDIT-C", ()
        ),
    )
}

MEASURE_BY_CODE: dict[str, MeasureSpec] = {m.code.code: m for m in MEASURES.values()}
"""Measurements by LOINC code."""

VITAL_CODES: frozenset[str] = frozenset(m.code.code for m in MEASURES.values() if m.kind == "vital")
"""LOINC codes of vital signs (an OMOP measurement with one of them becomes a ``vital`` event)."""


def drug_stem(name: str) -> str:
    """The first word of a drug name, lower case (``"lisinopril 10 mg tablet"`` -> ``"lisinopril"``)."""
    return name.split(" ")[0].lower()


DRUG_NAMES: frozenset[str] = frozenset(
    {
        # cardiometabolic
        "lisinopril",
        "amlodipine",
        "losartan",
        "hydrochlorothiazide",
        "metoprolol",
        "furosemide",
        "atorvastatin",
        "simvastatin",
        "rosuvastatin",
        "pravastatin",
        "aspirin",
        "apixaban",
        "warfarin",
        "clopidogrel",
        "metformin",
        "insulin",
        "glipizide",
        "sitagliptin",
        "empagliflozin",
        "semaglutide",
        "levothyroxine",
        "allopurinol",
        # psychiatric, sleep and neurological
        "sertraline",
        "escitalopram",
        "citalopram",
        "fluoxetine",
        "paroxetine",
        "duloxetine",
        "venlafaxine",
        "mirtazapine",
        "bupropion",
        "trazodone",
        "amitriptyline",
        "buspirone",
        "zolpidem",
        "quetiapine",
        "risperidone",
        "haloperidol",
        "lorazepam",
        "clonazepam",
        "diazepam",
        "alprazolam",
        "gabapentin",
        "carbidopa",
        "levodopa",
        "donepezil",
        "memantine",
        "rivastigmine",
        "galantamine",
        "lecanemab",
        "aducanumab",
        "donanemab",
        # anticholinergic and other common drugs
        "oxybutynin",
        "tolterodine",
        "diphenhydramine",
        "hydroxyzine",
        "loratadine",
        "cyclobenzaprine",
        "tamsulosin",
        "omeprazole",
        "albuterol",
        "prednisone",
        "acetaminophen",
        "ibuprofen",
        "alendronate",
        "cholecalciferol",
        "nitrofurantoin",
        "naltrexone",
        "varenicline",
    }
)
"""Drug names (first words, lower case) the grounding check recognises in a rationale: a cited drug must be
among the patient's medications. Extend it for a cohort whose drugs are not here."""
