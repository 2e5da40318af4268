"""MEDS codes -> the toolkit's events: vocabularies, event kinds, static codes and the code map file.

A MEDS code is a string; most ETLs write ``VOCABULARY//CODE`` (``ICD10CM//I10``, ``LOINC//4548-4``,
``RxNorm//1191``), some a single slash (``ICD10CM/I10``), and some a longer prefix (``DIAGNOSIS//ICD//10//I10``).
A code becomes an event through the first rule that matches:

1. ``[codes]`` of the code map: the whole code, to a kind, system, code and name;
2. the ``icl_kind`` column of ``metadata/codes.parquet`` (written by ``icl data to-meds``), with the system and
   code read from the prefix;
3. ``[vocabularies]`` of the code map, then the built-in vocabularies (:data:`VOCABULARIES`), by the longest
   matching prefix of ``//``-separated parts; the part after the prefix is the code.

A code that matches nothing still becomes an event, a generic one (:data:`GENERIC_SYSTEM`): kind ``observation``,
or ``lab`` (a measurement) on a row with a numeric value; the whole code as its code, and the description of
``metadata/codes.parquet`` (else the code) as its name. Such codes are counted by the importer, so a code map can
refine the most common. The prefix ``ICL//`` holds the toolkit's own markers (``ICL//INDEX``: the index date of an
exported record) and is never an event; a code map's ``ignore`` prefixes are left out.

``--code-map mimic-iv`` names the code map shipped for the MIMIC-IV MEDS ETL's codes (:data:`SHIPPED_MAPS`).

Static rows (null time) and the birth row give the demographics: ``MEDS_BIRTH`` (any time: its time is the
birth date) and sex codes such as ``GENDER//F``, ``SEX//MALE`` or ``Gender/F``; a code map adds others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.core.files import load_settings_file
from icl_toolkit.data.omop.outcome import OutcomeDefinition, normalize_code
from icl_toolkit.data.vocabulary import MEASURE_BY_CODE, VITAL_CODES

__all__ = [
    "VOCABULARIES",
    "MARKER_PREFIX",
    "INDEX_CODE",
    "CodeRule",
    "CodeMap",
    "load_code_map",
    "MappedCode",
    "CodeResolver",
    "GENERIC_SYSTEM",
    "SHIPPED_MAPS",
    "shipped_map",
    "OutcomeMatcher",
    "sex_of",
    "to_meds_code",
]

Kind = Literal["diagnosis", "medication", "procedure", "lab", "vital", "visit", "observation"]

MARKER_PREFIX = "ICL//"
"""Codes under this prefix are the toolkit's markers, never events."""
INDEX_CODE = "ICL//INDEX"
"""Written by ``icl data to-meds`` at each record's index date (the prediction time), so a task can trigger on it."""

# vocabulary prefix -> (system written in the cohort, default kind)
VOCABULARIES: dict[str, tuple[str, str]] = {
    "ICD10CM": ("ICD10CM", "diagnosis"),
    "ICD10": ("ICD10CM", "diagnosis"),
    "ICD-10-CM": ("ICD10CM", "diagnosis"),
    "ICD9CM": ("ICD9CM", "diagnosis"),
    "ICD9": ("ICD9CM", "diagnosis"),
    "ICD-9-CM": ("ICD9CM", "diagnosis"),
    "SNOMED": ("SNOMED", "diagnosis"),
    "SNOMEDCT": ("SNOMED", "diagnosis"),
    "SNOMEDCT_US": ("SNOMED", "diagnosis"),
    "RXNORM": ("RxNorm", "medication"),
    "RXNORM EXTENSION": ("RxNorm", "medication"),
    "NDC": ("NDC", "medication"),
    "ATC": ("ATC", "medication"),
    "LOINC": ("LOINC", "lab"),
    "CPT": ("CPT", "procedure"),
    "CPT4": ("CPT", "procedure"),
    "HCPCS": ("HCPCS", "procedure"),
    "ICD10PCS": ("ICD10PCS", "procedure"),
    "ICD9PROC": ("ICD9PROC", "procedure"),
    "VISIT": ("visit", "visit"),
}
"""Built-in vocabularies (matched case-insensitively): prefix -> (system, default kind)."""

_EM_VISIT = re.compile(r"^99[2-4]\d\d$")  # CPT evaluation and management codes: office, hospital, ED visits
_SEX_PREFIX = re.compile(r"^(GENDER|SEX)(//|/|:)(.+)$", re.IGNORECASE)
_SEX_VALUES = {
    "F": "F",
    "FEMALE": "F",
    "W": "F",
    "WOMAN": "F",
    "8532": "F",
    "M": "M",
    "MALE": "M",
    "MAN": "M",
    "8507": "M",
}
_BIRTH_CODES = {"MEDS_BIRTH", "BIRTH", "DOB", "BIRTH//BIRTH"}
GROUP_PREFIX = "GROUP"
"""``GROUP//ATTR//VALUE``: the static row of one group attribute (``Patient.groups``)."""


class CodeRule(BaseModel):
    """How one code (``[codes]``) or one vocabulary prefix (``[vocabularies]``) becomes an event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    system: str = Field(min_length=1)
    code: str | None = None
    """The code in the cohort (``[codes]`` only; default: the part after the last ``//``)."""
    name: str | None = None
    """Display name (``[codes]`` only; default: codes.parquet's description, else the code)."""
    unit: Literal["last"] | None = None
    """``"last"``: the code's last ``//`` part is the unit of its value (MIMIC-IV's ``LAB//50931//mg/dL``), not
    part of the code; a row's own ``unit`` wins."""


class StaticRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    birth: tuple[str, ...] = ()
    """More codes whose time is the birth date."""
    sex: dict[str, Literal["F", "M", "U"]] = {}
    """More codes that give the sex, e.g. ``"DEMO//SEX//1" = "M"``."""
    groups: dict[str, str] = {}
    """Static code prefixes that give a group attribute (``Patient.groups``, for fairness reports), e.g.
    ``"RACE//" = "race"``: a null-time row ``RACE//White`` gives ``race = "White"``. ``GROUP//ATTR//VALUE`` rows
    (what ``icl data to-meds`` writes) are read without one."""


class CodeMap(BaseModel):
    """A ``--code-map`` TOML file: more codes and vocabularies than the built-in ones (unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    codes: dict[str, CodeRule] = {}
    vocabularies: dict[str, CodeRule] = {}
    static: StaticRules = StaticRules()
    ignore: tuple[str, ...] = ()
    """Code prefixes to leave out without counting them as unknown (administrative codes, say)."""


SHIPPED_MAPS = {"mimic-iv": "mimic_iv.toml"}
"""Code maps shipped in the package, by the name ``--code-map`` takes: ``mimic-iv`` (the MIMIC-IV MEDS ETL)."""


def shipped_map(name: str) -> Path:
    """The file of a shipped code map."""
    import importlib.resources

    return Path(str(importlib.resources.files("icl_toolkit.data.meds") / "code_maps" / SHIPPED_MAPS[name]))


def load_code_map(path: str | Path) -> CodeMap:
    """Read a code map TOML file, or a shipped one by name (``mimic-iv``); a bad field is a :class:`ConfigError`
    naming the file and the field."""
    if str(path) in SHIPPED_MAPS and not Path(path).exists():
        path = shipped_map(str(path))
    return load_settings_file(
        path,
        CodeMap,
        "code map",
        'Sections: [codes."VOCAB//CODE"] and [vocabularies."PREFIX"] with kind, system (code, '
        "name for codes); [static] with birth, sex and groups; ignore = [prefixes].",
    )


GENERIC_SYSTEM = "MEDS"
"""The system of a generic event (a code of no known vocabulary, kept as it is)."""


@dataclass(frozen=True, slots=True)
class MappedCode:
    kind: str
    system: str
    code: str
    name: str
    unit: str | None = None  # the unit the code carries (a rule with ``unit = "last"``)
    generic: bool = False  # no rule or vocabulary matched: kind observation, or lab with a numeric value


def _split(code: str) -> list[str]:
    parts = code.split("//")
    if len(parts) == 1 and "/" in code:  # meds_etl style: ICD10CM/I10
        head, _, rest = code.partition("/")
        if head.upper() in VOCABULARIES:
            return [head, rest]
    return parts


def _refine(kind: str, system: str, code: str) -> str:
    """The built-in refinements of a vocabulary's default kind: LOINC vital signs and scored assessments, CPT
    evaluation-and-management codes (visits)."""
    if system == "LOINC":
        if code in VITAL_CODES:
            return "vital"
        spec = MEASURE_BY_CODE.get(code)
        if spec is not None:
            return spec.kind
    if system == "CPT" and _EM_VISIT.match(code):
        return "visit"
    return kind


class CodeResolver:
    """Resolves MEDS codes to events (cached per code).

    Args:
        code_map: the user's map (``--code-map``), or None.
        descriptions: ``code -> description`` from ``metadata/codes.parquet``.
        kinds: ``code -> icl_kind`` from the same file (an export of this toolkit writes it).
    """

    def __init__(self, code_map: CodeMap | None, descriptions: dict[str, str], kinds: dict[str, str]) -> None:
        self.map = code_map or CodeMap()
        self.descriptions, self.kinds = descriptions, kinds
        self._vocab = {k.upper(): (v.system, v.kind, v.unit == "last") for k, v in self.map.vocabularies.items()}
        self._builtin = {k.upper(): (*v, False) for k, v in VOCABULARIES.items()}
        self._cache: dict[str, MappedCode | str] = {}
        self.birth_codes = _BIRTH_CODES | {c.upper() for c in self.map.static.birth}
        self.sex_codes = {k.upper(): v for k, v in self.map.static.sex.items()}
        # longest prefix first, so that "RACE//DETAIL//" wins over "RACE//"
        self.group_prefixes = sorted(
            ((k.upper(), v) for k, v in self.map.static.groups.items()), key=lambda kv: -len(kv[0])
        )

    def is_birth(self, code: str) -> bool:
        return code.upper() in self.birth_codes

    def group(self, code: str) -> tuple[str, str] | None:
        """``(attribute, value)`` when a static ``code`` names a group (``GROUP//ATTR//VALUE`` or a ``[static]
        groups`` prefix), else None."""
        upper = code.upper()
        for prefix, attr in self.group_prefixes:
            if upper.startswith(prefix) and len(code) > len(prefix):
                return attr, code[len(prefix) :]
        parts = code.split("//", 2)
        if len(parts) == 3 and parts[0].upper() == GROUP_PREFIX and parts[1] and parts[2]:
            return parts[1], parts[2]
        return None

    def sex(self, code: str) -> str | None:
        """``F``, ``M`` or ``U`` when ``code`` is a sex code, else None."""
        if code.upper() in self.sex_codes:
            return self.sex_codes[code.upper()]
        return sex_of(code)

    def resolve(self, code: str) -> MappedCode | str:
        """The event for ``code`` (a generic one for a code of no known vocabulary), or the reason it is not one
        (``ignored code``, ``toolkit marker``)."""
        hit = self._cache.get(code)
        if hit is None:
            hit = self._cache[code] = self._resolve(code)
        return hit

    def _name(self, code: str, local: str) -> str:
        """codes.parquet's description, else the toolkit's own name for a known measurement, else the code."""
        spec = MEASURE_BY_CODE.get(local) if code.upper().startswith("LOINC") else None
        return self.descriptions.get(code) or (spec.code.name if spec else local)

    def _resolve(self, code: str) -> MappedCode | str:
        rule = self.map.codes.get(code)
        if rule is not None:
            local = rule.code or _split(code)[-1]
            return MappedCode(rule.kind, rule.system, local, rule.name or self._name(code, local))
        if code.startswith(MARKER_PREFIX):
            return "toolkit marker (ICL//INDEX: not an event)"
        if any(code.startswith(p) for p in self.map.ignore):
            return "ignored code (code map)"
        parts = _split(code)
        for n in range(len(parts) - 1, 0, -1):  # longest prefix first
            prefix = "//".join(parts[:n]).upper()
            found = self._vocab.get(prefix) or self._builtin.get(prefix)
            if found is not None:
                system, kind, unit_last = found
                rest = parts[n:]
                unit = rest.pop() if unit_last and len(rest) > 1 else None
                local = "//".join(rest)
                if not local:
                    break
                kind = self.kinds.get(code) or _refine(kind, system, local)
                return MappedCode(kind, system, local, self._name(code, local), unit)
        name = self.descriptions.get(code) or code
        return MappedCode(self.kinds.get(code) or "observation", GENERIC_SYSTEM, code, name, generic=True)


def sex_of(code: str) -> str | None:
    """``GENDER//F`` -> ``F``; ``SEX//male`` -> ``M``; ``GENDER//X`` -> ``U``; not a sex code -> None."""
    m = _SEX_PREFIX.match(code)
    if not m:
        return None
    return _SEX_VALUES.get(m.group(3).strip().upper(), "U")


def to_meds_code(system: str, code: str) -> str:
    """The MEDS code this toolkit writes for an event: ``SYSTEM//CODE``."""
    return f"{system}//{code}"


class OutcomeMatcher:
    """Which MEDS codes are outcome records, from an :class:`OutcomeDefinition` (default ADRD): ICD-10 codes by
    prefix (``ICD10CM//G30.9``), SNOMED codes exactly, and the definition's ``meds_codes`` (a trailing ``*`` is a
    prefix)."""

    def __init__(self, definition: OutcomeDefinition) -> None:
        self.definition = definition
        self._icd = tuple(definition.icd10_prefixes)
        self._snomed = set(definition.snomed_codes)
        self._exact = {c for c in definition.meds_codes if not c.endswith("*")}
        self._prefix = tuple(c[:-1] for c in definition.meds_codes if c.endswith("*"))
        self._cache: dict[str, bool] = {}

    def __call__(self, code: str) -> bool:
        hit = self._cache.get(code)
        if hit is None:
            hit = self._cache[code] = self._match(code)
        return hit

    def _match(self, code: str) -> bool:
        if code in self._exact or (self._prefix and code.startswith(self._prefix)):
            return True
        parts = _split(code)
        if len(parts) < 2:
            return False
        vocab, local = parts[0].upper(), parts[-1]
        if vocab in ("ICD10CM", "ICD10", "ICD-10-CM"):
            return normalize_code(local).startswith(self._icd) if self._icd else False
        if vocab in ("SNOMED", "SNOMEDCT", "SNOMEDCT_US"):
            return local.strip() in self._snomed
        return False
