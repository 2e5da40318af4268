"""The outcome's concept set: which condition records count as ADRD.

A condition record is an outcome record when any of these holds:

1. its ``condition_concept_id`` is in the set of standard concepts: the listed
   OMOP concept ids, the concepts whose SNOMED ``concept_code`` is listed (looked
   up in the ``concept`` table), and, when ``concept_ancestor`` is present and
   ``include_descendants`` is on, every descendant of those;
2. its ``condition_source_value``, upper-cased with dots and spaces removed,
   starts with one of the ICD-10 prefixes (``F00``-``F03``, ``G30``, ``G31.0``,
   ``G31.83``) or equals one of the SNOMED codes (ETLs that leave a record
   unmapped, ``concept_id`` 0, often keep the SNOMED code there);
3. its ``condition_source_concept_id`` is an ICD-10/ICD-10-CM concept whose
   code starts with one of the prefixes.

``icl data from-meds`` matches MEDS codes with the ICD-10 prefixes
(``ICD10CM//G30.9``), the SNOMED codes (``SNOMED//26929004``) and ``meds_codes``.

The default is :data:`ADRD`. Another definition can be read from a TOML or JSON
file with the same fields (``icl data from-omop --outcome FILE``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from icl_toolkit.core.files import load_settings_file

__all__ = ["OutcomeDefinition", "ADRD", "load_outcome", "normalize_code"]


def normalize_code(code: str) -> str:
    """``g31.83 `` -> ``G3183``: upper case, no dots, no spaces."""
    return code.upper().replace(".", "").replace(" ", "")


class OutcomeDefinition(BaseModel):
    """A condition concept set (validated; unknown fields are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    """Short name, shown in summaries and stored with the cohort."""
    snomed_codes: tuple[str, ...] = ()
    """SNOMED CT codes of the standard concepts (resolved through the concept table)."""
    concept_ids: tuple[int, ...] = ()
    """OMOP concept ids used as they are (whether or not the concept table lists them)."""
    icd10_prefixes: tuple[str, ...] = ()
    """ICD-10 / ICD-10-CM code prefixes, matched against source values and source concepts."""
    include_descendants: bool = True
    """Add every descendant of the standard concepts when concept_ancestor is present."""
    meds_codes: tuple[str, ...] = ()
    """Whole MEDS codes (``VOCAB//CODE``; a trailing ``*`` matches a prefix), for ``icl data from-meds`` only."""

    @field_validator("icd10_prefixes")
    @classmethod
    def _norm_prefixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_code(x) for x in v)

    @field_validator("snomed_codes")
    @classmethod
    def _digits(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for code in v:
            if not code.strip().isdigit():
                raise ValueError(f"a SNOMED code is digits only, got {code!r}")
        return tuple(c.strip() for c in v)


ADRD = OutcomeDefinition(
    name="ADRD",
    snomed_codes=(
        "52448006",  # Dementia
        "26929004",  # Alzheimer's disease
        "230265002",  # Familial Alzheimer's disease of early onset
        "429998004",  # Vascular dementia
        "56267009",  # Multi-infarct dementia
        "312991009",  # Senile dementia of the Lewy body type
        "80098002",  # Diffuse Lewy body disease
        "230270009",  # Frontotemporal dementia
        "15662003",  # Senile dementia
        "12348006",  # Presenile dementia
    ),
    concept_ids=(
        4182210,  # Dementia
        378419,  # Alzheimer's disease
        4043241,  # Familial Alzheimer's disease of early onset
        4043378,  # Frontotemporal dementia
    ),
    icd10_prefixes=("F00", "F01", "F02", "F03", "G30", "G31.0", "G31.83"),
)


def load_outcome(path: str | Path) -> OutcomeDefinition:
    """Read an outcome definition from a TOML or JSON file."""
    return load_settings_file(
        path,
        OutcomeDefinition,
        "outcome definition",
        "Fields: name, snomed_codes, concept_ids, icd10_prefixes, include_descendants, meds_codes.",
    )
