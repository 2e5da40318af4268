"""Check that a rationale only cites what is in the patient's history before the index date.

A rationale's checkable claims are pulled out of its text:

- **codes**: ICD-10-CM shaped tokens (``G31.84``, ``I10``, ``W19.XXXA``),
  LOINC shaped tokens (``4548-4``) and long numeric codes of six or more digits
  (SNOMED CT, as OMOP data carries them: ``26929004``);
- **dates**: ISO dates (``2019-03-14``) and month-year dates (``March 2019``);
- **values**: a measurement name followed by a number (``HbA1c of 7.4``,
  ``MoCA score of 22``) and numbers with a clinical unit (``152 mmHg``);
- **drugs**: names from a drug lexicon (the synthetic vocabulary plus common
  drugs a teacher model might mention, dementia drugs among them).

Each claim is grounded when the history (events dated on or before the index
date) holds a matching item: the same code; an event on that date or in that
month; a measurement of that kind (by code or by name), or with that unit, whose
value rounds to the cited number; a medication event naming that drug.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Event, Patient
from icl_toolkit.data.vocabulary import DRUG_NAMES, MEASURES

__all__ = ["Claim", "GroundingReport", "extract_claims", "check_grounding"]

_MONTHS = {
    m: i
    for i, m in enumerate(
        (
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ),
        start=1,
    )
}
_ICD = re.compile(r"(?<![\w.-])([A-TV-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?)(?![\w-])")
_LOINC = re.compile(r"(?<![\w.-])(\d{3,5}-\d)(?![\w-])")
_NUMERIC_CODE = re.compile(r"(?<![\w.,-])(\d{6,18})(?![\w.,-])")
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_MONTH_YEAR = re.compile(r"\b(" + "|".join(_MONTHS) + r")\s+(\d{4})\b", re.IGNORECASE)
_UNITS = sorted({m.unit for m in MEASURES.values() if m.unit != "{score}"}, key=len, reverse=True)
_UNIT_VALUE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?(" + "|".join(re.escape(u) for u in _UNITS) + r")(?![\w/])")
_NAMED: list[tuple[re.Pattern[str], str]] = []
for _m in MEASURES.values():
    for _name in sorted({_m.short, *_m.aliases}, key=len, reverse=True):
        _NAMED.append(
            (
                re.compile(
                    r"(?<!\w)" + re.escape(_name) + r"(?!\w)[^\d.;()\[\]]{0,40}?(?<![\w.])(\d+(?:\.\d+)?)(?![\d-])",
                    re.IGNORECASE,
                ),
                _m.key,
            )
        )
_DRUG = re.compile(r"\b(" + "|".join(sorted(DRUG_NAMES, key=len, reverse=True)) + r")\b", re.IGNORECASE)
_NOT_CODES = ("vitamin ",)


@dataclass(frozen=True, slots=True)
class Claim:
    """One checkable statement in a rationale."""

    kind: str  # code | date | value | drug
    text: str  # as written
    start: int  # character offset in the rationale
    grounded: bool


@dataclass
class GroundingReport:
    """The claims found in a rationale and whether each is backed by the history."""

    claims: list[Claim] = field(default_factory=list)

    @property
    def ungrounded(self) -> list[Claim]:
        return [c for c in self.claims if not c.grounded]

    @property
    def grounded_fraction(self) -> float:
        """Share of claims that are grounded (1.0 when there is nothing to check)."""
        return 1.0 - len(self.ungrounded) / len(self.claims) if self.claims else 1.0

    @property
    def ok(self) -> bool:
        return not self.ungrounded


def _matches_number(value: float | int | str | None, cited: str) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    decimals = len(cited.split(".")[1]) if "." in cited else 0
    return abs(round(float(value), decimals) - float(cited)) < 10 ** (-decimals) / 2 + 1e-9


def extract_claims(text: str) -> list[tuple[str, str, int, tuple]]:
    """The claims in ``text`` as (kind, text, offset, parsed) tuples, in order of appearance."""
    out: list[tuple[str, str, int, tuple]] = []
    for m in _ICD.finditer(text):
        before = text[max(0, m.start() - 8) : m.start()].lower()
        if any(before.endswith(w) for w in _NOT_CODES):
            continue
        out.append(("code", m.group(1), m.start(), (m.group(1),)))
    for pattern in (_LOINC, _NUMERIC_CODE):
        for m in pattern.finditer(text):
            out.append(("code", m.group(1), m.start(), (m.group(1),)))
    date_spans: list[tuple[int, int]] = []
    for m in _ISO.finditer(text):
        date_spans.append(m.span())
        try:
            d = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            d = None
        out.append(("date", m.group(0), m.start(), (d,)))
    for m in _MONTH_YEAR.finditer(text):
        date_spans.append(m.span())
        out.append(("date", m.group(0), m.start(), (int(m.group(2)), _MONTHS[m.group(1).lower()])))
    named_spans: set[int] = set()
    for pattern, key in _NAMED:
        for m in pattern.finditer(text):
            if m.start(1) in named_spans or any(a <= m.start(1) < b for a, b in date_spans):
                continue
            named_spans.add(m.start(1))
            out.append(("value", m.group(0), m.start(), (key, m.group(1))))
    for m in _UNIT_VALUE.finditer(text):
        if m.start(1) in named_spans:
            continue
        out.append(("value", m.group(0), m.start(), ("unit:" + m.group(2), m.group(1))))
    for m in _DRUG.finditer(text):
        out.append(("drug", m.group(1), m.start(), (m.group(1).lower(),)))
    out.sort(key=lambda c: c[2])
    return out


def _grounded(kind: str, parsed: tuple, hist: list[Event]) -> bool:
    if kind == "code":
        return any(e.code == parsed[0] for e in hist)
    if kind == "date":
        if len(parsed) == 1:
            return parsed[0] is not None and any(e.date == parsed[0] for e in hist)
        year, month = parsed
        return any(e.date.year == year and e.date.month == month for e in hist)
    if kind == "value":
        key, cited = parsed
        if key.startswith("unit:"):
            unit = key[5:]
            return any(e.unit == unit and _matches_number(e.value, cited) for e in hist)
        spec = MEASURES[key]
        names = [n.lower() for n in (spec.short, *spec.aliases)]
        return any(
            (e.code == spec.code.code or any(n in e.name.lower() for n in names)) and _matches_number(e.value, cited)
            for e in hist
        )
    if kind == "drug":
        word = re.compile(r"\b" + re.escape(parsed[0]) + r"\b")
        return any(e.kind == "medication" and word.search(e.name.lower()) for e in hist)
    raise ConfigError(f"unknown claim kind {kind!r}")


def check_grounding(text: str, patient: Patient) -> GroundingReport:
    """Check every claim of ``text`` against ``patient``'s history before the index date."""
    hist = patient.history()
    return GroundingReport(
        [Claim(kind, raw, start, _grounded(kind, parsed, hist)) for kind, raw, start, parsed in extract_claims(text)]
    )
