"""Clinical vocabulary of the synthetic cohort: conditions, drugs, procedures (measurements and the code record\ncome from :mod:`icl_toolkit.data.vocabulary`, which every data path shares).

Codes are real code-system identifiers (ICD-10-CM for diagnoses, RxNorm
ingredient concepts for drugs, LOINC for labs, vitals and assessments, CPT and
HCPCS for procedures and visits, SNOMED CT for a social finding). Their use
here is illustrative: the cohort is synthetic, and nothing here is a clinical
code list to reuse without review.
"""

from __future__ import annotations

from dataclasses import dataclass

from icl_toolkit.data.vocabulary import MEASURES, Code, MeasureSpec, drug_stem, loinc

__all__ = [
    "Code",
    "ConditionSpec",
    "MeasureSpec",
    "RISK_FACTORS",
    "PRODROMAL",
    "NOISE",
    "CONDITIONS",
    "MEASURES",
    "VISITS",
    "PROCEDURES",
    "OBSERVATIONS",
    "ANTICHOLINERGIC_DRUGS",
    "SYNTH_DRUG_NAMES",
]


def icd(code: str, name: str) -> Code:
    return Code(code, "ICD10CM", name)


def rx(code: str, name: str) -> Code:
    return Code(code, "RxNorm", name)


@dataclass(frozen=True, slots=True)
class ConditionSpec:
    """How a condition shows up in a record.

    Attributes:
        key: short identifier used by the risk model and the rationales.
        label: plain-language name used in rationales and profiles.
        codes: diagnosis codes; the first is the usual one, the others appear
            as alternatives in some records.
        record_prob: chance a true condition is ever coded (under-coding).
        repeat_prob: chance it is coded again at each later visit.
        drugs: drugs used for it; one is chosen when the condition is treated.
        treat_prob: chance a coded condition gets a drug.
        episodic: coded as separate episodes (falls, injuries) rather than a
            chronic problem-list entry.
    """

    key: str
    label: str
    codes: tuple[Code, ...]
    record_prob: float
    repeat_prob: float
    drugs: tuple[Code, ...] = ()
    treat_prob: float = 0.0
    episodic: bool = False


# ---------------------------------------------------------------- modifiable risk factors
# The twelve the 2024 Lancet Commission lists that can be seen in a health
# record (less education and air pollution cannot). Effect sizes: risk.py.
RISK_FACTORS: tuple[ConditionSpec, ...] = (
    ConditionSpec(
        "hypertension",
        "hypertension",
        (icd("I10", "Essential (primary) hypertension"),),
        0.92,
        0.55,
        (
            rx("29046", "lisinopril 10 mg tablet"),
            rx("17767", "amlodipine 5 mg tablet"),
            rx("52175", "losartan 50 mg tablet"),
            rx("5487", "hydrochlorothiazide 25 mg tablet"),
        ),
        0.85,
    ),
    ConditionSpec(
        "diabetes",
        "type 2 diabetes",
        (
            icd("E11.9", "Type 2 diabetes mellitus without complications"),
            icd("E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
        ),
        0.95,
        0.6,
        (rx("6809", "metformin 500 mg tablet"), rx("274783", "insulin glargine 100 unit/mL injection")),
        0.85,
    ),
    ConditionSpec(
        "obesity",
        "obesity",
        (icd("E66.9", "Obesity, unspecified"), icd("E66.01", "Morbid (severe) obesity due to excess calories")),
        0.55,
        0.3,
    ),
    ConditionSpec(
        "high_ldl",
        "high LDL cholesterol",
        (icd("E78.00", "Pure hypercholesterolemia, unspecified"), icd("E78.5", "Hyperlipidemia, unspecified")),
        0.75,
        0.45,
        (rx("83367", "atorvastatin 20 mg tablet"), rx("36567", "simvastatin 20 mg tablet")),
        0.6,
    ),
    ConditionSpec(
        "hearing_loss",
        "hearing loss",
        (
            icd("H90.3", "Sensorineural hearing loss, bilateral"),
            icd("H91.90", "Unspecified hearing loss, unspecified ear"),
        ),
        0.55,
        0.2,
    ),
    ConditionSpec(
        "depression",
        "depression",
        (
            icd("F32.9", "Major depressive disorder, single episode, unspecified"),
            icd("F33.1", "Major depressive disorder, recurrent, moderate"),
        ),
        0.7,
        0.4,
        (
            rx("36437", "sertraline 50 mg tablet"),
            rx("321988", "escitalopram 10 mg tablet"),
            rx("32937", "paroxetine 20 mg tablet"),
            rx("704", "amitriptyline 25 mg tablet"),
        ),
        0.7,
    ),
    ConditionSpec(
        "tbi",
        "traumatic brain injury",
        (
            icd("S06.0X0A", "Concussion without loss of consciousness, initial encounter"),
            icd("S06.9X0A", "Unspecified intracranial injury without loss of consciousness, initial encounter"),
        ),
        0.85,
        0.0,
        episodic=True,
    ),
    ConditionSpec(
        "smoking",
        "current smoking",
        (icd("F17.210", "Nicotine dependence, cigarettes, uncomplicated"),),
        0.75,
        0.35,
        (rx("591622", "varenicline 1 mg tablet"),),
        0.15,
    ),
    ConditionSpec(
        "alcohol",
        "excess alcohol use",
        (icd("F10.10", "Alcohol abuse, uncomplicated"), icd("F10.20", "Alcohol dependence, uncomplicated")),
        0.5,
        0.3,
        (rx("7243", "naltrexone 50 mg tablet"),),
        0.15,
    ),
    ConditionSpec("inactivity", "physical inactivity", (icd("Z72.3", "Lack of physical exercise"),), 0.35, 0.15),
    ConditionSpec(
        "social_isolation",
        "social isolation",
        (icd("Z60.2", "Problems related to living alone"), icd("Z60.4", "Social exclusion and rejection")),
        0.4,
        0.2,
    ),
    ConditionSpec(
        "vision_loss",
        "untreated vision loss",
        (icd("H54.7", "Unspecified visual loss"), icd("H25.9", "Unspecified age-related cataract")),
        0.65,
        0.25,
    ),
)

# ---------------------------------------------------------------- prodromal signals
PRODROMAL: tuple[ConditionSpec, ...] = (
    ConditionSpec(
        "memory_complaints",
        "memory complaints",
        (icd("R41.3", "Other amnesia"), icd("R41.81", "Age-related cognitive decline")),
        0.75,
        0.45,
    ),
    ConditionSpec(
        "mci",
        "mild cognitive impairment",
        (icd("G31.84", "Mild cognitive impairment of uncertain or known etiology"),),
        0.85,
        0.6,
    ),
    ConditionSpec(
        "falls",
        "falls",
        (
            icd("W19.XXXA", "Unspecified fall, initial encounter"),
            icd("R29.6", "Repeated falls"),
            icd("Z91.81", "History of falling"),
        ),
        0.8,
        0.35,
        episodic=True,
    ),
    ConditionSpec("weight_loss", "unintended weight loss", (icd("R63.4", "Abnormal weight loss"),), 0.6, 0.3),
    ConditionSpec(
        "anxiety",
        "anxiety",
        (icd("F41.9", "Anxiety disorder, unspecified"), icd("F41.1", "Generalized anxiety disorder")),
        0.7,
        0.4,
        (rx("1827", "buspirone 10 mg tablet"), rx("5553", "hydroxyzine 25 mg tablet")),
        0.5,
    ),
    ConditionSpec(
        "sleep",
        "sleep disturbance",
        (icd("G47.00", "Insomnia, unspecified"), icd("G47.33", "Obstructive sleep apnea (adult) (pediatric)")),
        0.7,
        0.35,
        (
            rx("39993", "zolpidem 5 mg tablet"),
            rx("10737", "trazodone 50 mg tablet"),
            rx("3498", "diphenhydramine 25 mg capsule"),
        ),
        0.55,
    ),
    # anticholinergic burden is carried by its drugs, not a diagnosis; the code
    # below is the indication (overactive bladder) that usually comes with it
    ConditionSpec(
        "anticholinergic",
        "strong anticholinergic drug use",
        (icd("N32.81", "Overactive bladder"),),
        0.6,
        0.3,
        (rx("32675", "oxybutynin 5 mg tablet"), rx("119565", "tolterodine 2 mg tablet")),
        1.0,
    ),
)

# Drugs scored 3 (strong) on the Anticholinergic Cognitive Burden scale
# (Boustani et al. 2008, Aging Health 4:311-320; 2012 update).
ANTICHOLINERGIC_DRUGS: frozenset[str] = frozenset(
    {
        "oxybutynin",
        "tolterodine",
        "amitriptyline",
        "paroxetine",
        "diphenhydramine",
        "hydroxyzine",
    }
)

# ---------------------------------------------------------------- unrelated conditions (noise)
NOISE: tuple[ConditionSpec, ...] = (
    ConditionSpec(
        "osteoarthritis",
        "osteoarthritis",
        (icd("M17.9", "Osteoarthritis of knee, unspecified"),),
        0.9,
        0.3,
        (rx("161", "acetaminophen 500 mg tablet"), rx("5640", "ibuprofen 400 mg tablet")),
        0.6,
    ),
    ConditionSpec(
        "gerd",
        "reflux disease",
        (icd("K21.9", "Gastro-esophageal reflux disease without esophagitis"),),
        0.9,
        0.3,
        (rx("7646", "omeprazole 20 mg capsule"),),
        0.7,
    ),
    ConditionSpec(
        "hypothyroidism",
        "hypothyroidism",
        (icd("E03.9", "Hypothyroidism, unspecified"),),
        0.95,
        0.45,
        (rx("10582", "levothyroxine 50 mcg tablet"),),
        0.95,
    ),
    ConditionSpec(
        "bph",
        "benign prostatic hyperplasia",
        (icd("N40.0", "Benign prostatic hyperplasia without lower urinary tract symptoms"),),
        0.9,
        0.3,
        (rx("77492", "tamsulosin 0.4 mg capsule"),),
        0.7,
    ),
    ConditionSpec(
        "osteoporosis",
        "osteoporosis",
        (icd("M81.0", "Age-related osteoporosis without current pathological fracture"),),
        0.85,
        0.3,
        (rx("46041", "alendronate 70 mg tablet"),),
        0.6,
    ),
    ConditionSpec(
        "atrial_fibrillation",
        "atrial fibrillation",
        (icd("I48.91", "Unspecified atrial fibrillation"),),
        0.95,
        0.5,
        (rx("1364430", "apixaban 5 mg tablet"),),
        0.85,
    ),
    ConditionSpec(
        "ckd", "chronic kidney disease", (icd("N18.30", "Chronic kidney disease, stage 3 unspecified"),), 0.7, 0.35
    ),
    ConditionSpec(
        "copd",
        "COPD",
        (icd("J44.9", "Chronic obstructive pulmonary disease, unspecified"),),
        0.9,
        0.4,
        (rx("435", "albuterol 90 mcg inhaler"),),
        0.8,
    ),
    ConditionSpec(
        "back_pain",
        "low back pain",
        (icd("M54.50", "Low back pain, unspecified"),),
        0.9,
        0.15,
        (rx("21949", "cyclobenzaprine 10 mg tablet"), rx("25480", "gabapentin 300 mg capsule")),
        0.4,
    ),
    ConditionSpec(
        "rhinitis",
        "allergic rhinitis",
        (icd("J30.9", "Allergic rhinitis, unspecified"),),
        0.8,
        0.2,
        (rx("28889", "loratadine 10 mg tablet"),),
        0.6,
    ),
    ConditionSpec(
        "vitamin_d",
        "vitamin D deficiency",
        (icd("E55.9", "Vitamin D deficiency, unspecified"),),
        0.8,
        0.2,
        (rx("2418", "cholecalciferol 1000 unit tablet"),),
        0.8,
    ),
    ConditionSpec(
        "gout", "gout", (icd("M10.9", "Gout, unspecified"),), 0.9, 0.25, (rx("519", "allopurinol 100 mg tablet"),), 0.7
    ),
    ConditionSpec(
        "cad",
        "coronary artery disease",
        (icd("I25.10", "Atherosclerotic heart disease of native coronary artery without angina pectoris"),),
        0.9,
        0.45,
        (rx("1191", "aspirin 81 mg tablet"),),
        0.8,
    ),
    ConditionSpec("presbyopia", "presbyopia", (icd("H52.4", "Presbyopia"),), 0.6, 0.05),
    ConditionSpec("actinic_keratosis", "actinic keratosis", (icd("L57.0", "Actinic keratosis"),), 0.9, 0.1),
    ConditionSpec(
        "uri",
        "upper respiratory infection",
        (icd("J06.9", "Acute upper respiratory infection, unspecified"),),
        0.9,
        0.0,
        episodic=True,
    ),
    ConditionSpec(
        "uti",
        "urinary tract infection",
        (icd("N39.0", "Urinary tract infection, site not specified"),),
        0.9,
        0.0,
        (rx("7454", "nitrofurantoin 100 mg capsule"),),
        0.8,
        episodic=True,
    ),
)

CONDITIONS: dict[str, ConditionSpec] = {c.key: c for c in (*RISK_FACTORS, *PRODROMAL, *NOISE)}


SMOKING_STATUS = loinc("72166-2", "Tobacco smoking status")
LIVES_ALONE = Code("105529008", "SNOMED", "Lives alone")

OBSERVATIONS: dict[str, Code] = {"smoking_status": SMOKING_STATUS, "lives_alone": LIVES_ALONE}

VISITS: dict[str, Code] = {
    "office": Code("99213", "CPT", "Office visit, established patient"),
    "office_long": Code("99214", "CPT", "Office visit, established patient, moderate complexity"),
    "emergency": Code("99284", "CPT", "Emergency department visit"),
    "inpatient": Code("99223", "CPT", "Initial hospital inpatient care"),
    "wellness": Code("G0439", "HCPCS", "Annual wellness visit, subsequent"),
}

PROCEDURES: dict[str, Code] = {
    "cataract_surgery": Code("66984", "CPT", "Cataract removal with intraocular lens"),
    "audiometry": Code("92557", "CPT", "Comprehensive audiometry"),
    "hearing_aid": Code("V5261", "HCPCS", "Hearing aid, digital, binaural, behind the ear"),
    "ct_head": Code("70450", "CPT", "CT head without contrast"),
    "mri_brain": Code("70551", "CPT", "MRI brain without contrast"),
    "neuropsych": Code("96116", "CPT", "Neurobehavioral status examination"),
    "colonoscopy": Code("45378", "CPT", "Colonoscopy, diagnostic"),
    "dxa": Code("77080", "CPT", "DXA bone density study, axial skeleton"),
    "ecg": Code("93000", "CPT", "Electrocardiogram, routine, 12 leads"),
    "flu_vaccine": Code("90686", "CPT", "Influenza vaccine, quadrivalent, preservative free"),
    "knee_replacement": Code("27447", "CPT", "Total knee arthroplasty"),
}


SYNTH_DRUG_NAMES: frozenset[str] = frozenset(drug_stem(d.name) for spec in CONDITIONS.values() for d in spec.drugs)
"""First words of every drug the generator prescribes."""  # every one is in icl_toolkit.data.vocabulary.DRUG_NAMES (tested), so grounding knows them
