"""Teacher-style rationales for synthetic patients, grounded in their own records.

A rationale is written as a teacher model would write it when told the
outcome: it explains why this patient did (or did not) develop ADRD within
five years, citing findings from the record before the index date: diagnosis
codes with their dates, drug names, measured values with units. Only findings
present in :meth:`Patient.history` are ever cited, which
:mod:`icl_toolkit.rationales.grounding` checks independently.

Wording is drawn from phrase banks (several ways to say each kind of finding,
to open, to connect and to conclude), with the findings' order, number, date
style and sentence shapes all varying, so no two rationales share one template.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field

from icl_toolkit.data.cohort import Event, Patient, Rationales
from icl_toolkit.data.synth import vocab
from icl_toolkit.data.synth.risk import PRODROMAL_RR, RISK_FACTOR_RR

__all__ = ["Finding", "collect_findings", "write_rationales"]

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_CODE_TO_KEY: dict[str, str] = {
    c.code: spec.key for spec in (*vocab.RISK_FACTORS, *vocab.PRODROMAL) for c in spec.codes
}
_DOMAIN = {
    "mci": "cognitive",
    "memory_complaints": "cognitive",
    "falls": "prodromal",
    "weight_loss": "prodromal",
    "anxiety": "mood",
    "sleep": "mood",
    "depression": "mood",
    "anticholinergic": "drugs",
    "hypertension": "vascular",
    "high_ldl": "vascular",
    "diabetes": "metabolic",
    "obesity": "metabolic",
    "smoking": "lifestyle",
    "alcohol": "lifestyle",
    "inactivity": "lifestyle",
    "social_isolation": "lifestyle",
    "hearing_loss": "sensory",
    "vision_loss": "sensory",
    "tbi": "injury",
}


@dataclass
class Finding:
    """One citable fact from a record, with how much it bears on ADRD risk."""

    key: str
    domain: str
    weight: float
    label: str
    code: str | None = None
    name: str | None = None
    first: dt.date = field(kw_only=True)
    last: dt.date = field(kw_only=True)
    count: int = 1
    value: float | int | str | None = None
    unit: str | None = None
    short: str | None = None
    drug: str | None = None


def _years_before(index: dt.date, d: dt.date) -> float:
    return (index - d).days / 365.25


def _timing(key: str, years: float) -> float:
    if key == "anticholinergic":
        return 1.0 if years >= 3 else 0.6
    return 1.0 if years <= 2 else 0.6 if years <= 5 else 0.3


def collect_findings(p: Patient) -> list[Finding]:
    """Risk-relevant findings in the patient's history before the index date."""
    hist = p.history()
    found: dict[str, Finding] = {}
    for e in hist:
        if e.kind != "diagnosis" or e.code not in _CODE_TO_KEY:
            continue
        key = _CODE_TO_KEY[e.code]
        if key == "anticholinergic":
            continue  # that risk is carried by the drug, not the indication
        f = found.get(key)
        if f is None:
            spec = vocab.CONDITIONS[key]
            rr = RISK_FACTOR_RR.get(key) or PRODROMAL_RR.get(key, 1.1)
            w = math.log(rr) * (_timing(key, _years_before(p.index_date, e.date)) if key in PRODROMAL_RR else 1.0)
            found[key] = Finding(key, _DOMAIN[key], w, spec.label, e.code, e.name, first=e.date, last=e.date)
        else:
            f.last, f.count = e.date, f.count + 1
    # sensory loss that was treated carries no excess risk in the model
    procs = {e.code for e in hist if e.kind == "procedure"}
    if "hearing_loss" in found and vocab.PROCEDURES["hearing_aid"].code in procs:
        found["hearing_loss"].weight = 0.05
        found["hearing_loss"].label = "hearing loss (treated with hearing aids)"
    if "vision_loss" in found and vocab.PROCEDURES["cataract_surgery"].code in procs:
        found["vision_loss"].weight = 0.05
        found["vision_loss"].label = "vision loss (treated with cataract surgery)"
    out = list(found.values())

    ach = [e for e in hist if e.kind == "medication" and e.name.split(" ")[0] in vocab.ANTICHOLINERGIC_DRUGS]
    if ach:
        first = ach[0]
        yrs = _years_before(p.index_date, first.date)
        out.append(
            Finding(
                "anticholinergic",
                "drugs",
                math.log(PRODROMAL_RR["anticholinergic"]) * _timing("anticholinergic", yrs),
                "strong anticholinergic drug use",
                first=first.date,
                last=ach[-1].date,
                count=len(ach),
                drug=first.name.split(" ")[0],
            )
        )
    out.extend(_measure_findings(p, hist))
    out.sort(key=lambda f: -f.weight)
    return out


def _latest(hist: list[Event], key: str) -> Event | None:
    code = vocab.MEASURES[key].code.code
    for e in reversed(hist):
        if e.code == code and isinstance(e.value, (int, float)):
            return e
    return None


def _number(e: Event) -> float:
    """A measurement's value (the callers keep numeric ones only)."""
    assert isinstance(e.value, int | float), e
    return float(e.value)


def _measure(key: str, e: Event, weight: float, domain: str, label: str) -> Finding:
    spec = vocab.MEASURES[key]
    return Finding(
        key, domain, weight, label, first=e.date, last=e.date, value=e.value, unit=spec.unit, short=spec.short
    )


def _measure_findings(p: Patient, hist: list[Event]) -> list[Finding]:
    out: list[Finding] = []
    checks = (  # key, abnormal test, weight, domain, label
        ("moca", lambda v: v < 26, 0.9, "cognitive", "a low cognitive screening score"),
        ("hba1c", lambda v: v >= 6.5, 0.4, "metabolic", "poor glucose control"),
        ("ldl", lambda v: v >= 160, 0.2, "vascular", "high LDL cholesterol"),
        ("sbp", lambda v: v >= 140, 0.15, "vascular", "raised blood pressure"),
        ("bmi", lambda v: v >= 30, 0.2, "metabolic", "obesity by BMI"),
        ("phq9", lambda v: v >= 10, 0.5, "mood", "depressive symptoms on screening"),
        ("auditc", lambda v: v >= 5, 0.15, "lifestyle", "risky drinking on screening"),
    )
    for key, abnormal, w, domain, label in checks:
        e = _latest(hist, key)
        if e is not None and abnormal(_number(e)):
            out.append(_measure(key, e, w, domain, label))
        elif e is not None and key in ("moca", "sbp", "hba1c"):
            out.append(_measure(key, e, -0.2, "reassurance", f"normal {vocab.MEASURES[key].short}"))
    # weight loss visible as a falling BMI over the last three years
    bmis = [
        e
        for e in hist
        if e.code == vocab.MEASURES["bmi"].code.code
        and _years_before(p.index_date, e.date) <= 3.0
        and isinstance(e.value, (int, float))
    ]
    if len(bmis) >= 2 and _number(bmis[0]) - _number(bmis[-1]) >= 2.0:
        f = _measure("bmi", bmis[-1], 0.3, "prodromal", "falling BMI")
        f.first = bmis[0].date
        f.count = len(bmis)
        f.key = "bmi_decline"
        f.name = str(bmis[0].value)  # starting value, cited too
        out.append(f)
    smoking = [e for e in hist if e.code == vocab.SMOKING_STATUS.code]
    if smoking and smoking[-1].value == "Current every day smoker":
        out.append(
            Finding(
                "smoking_status",
                "lifestyle",
                0.1,
                "current smoking",
                first=smoking[-1].date,
                last=smoking[-1].date,
                value=str(smoking[-1].value),
            )
        )
    return out


# ------------------------------------------------------------------------- rendering


class _Writer:
    """Phrase banks and the random choices that vary a rationale's wording."""

    def __init__(self, p: Patient, rng: random.Random) -> None:
        self.p = p
        self.rng = rng
        self.iso = rng.random() < 0.5  # date style for this rationale
        self.age = int(p.age_at_index)
        self.noun = rng.choice(
            {"F": ("woman", "female patient", "woman"), "M": ("man", "male patient", "man")}.get(p.sex, ("patient",))
        )

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)

    def date(self, d: dt.date) -> str:
        if self.iso or self.rng.random() < 0.25:
            return d.isoformat()
        return f"{_MONTHS[d.month - 1]} {d.year}"

    def on(self, d: dt.date) -> str:
        """The date with its preposition: 'on 2019-03-14' or 'in March 2019'."""
        text = self.date(d)
        return f"on {text}" if text[0].isdigit() else f"in {text}"

    def ago(self, d: dt.date) -> str:
        yrs = _years_before(self.p.index_date, d)
        if yrs < 1:
            m = max(1, int(round(yrs * 12)))
            return self.pick(
                f"about {m} month{'s' if m > 1 else ''} before the index date",
                f"{m} month{'s' if m > 1 else ''} before the index date",
            )
        return self.pick(
            f"about {yrs:.0f} year{'s' if round(yrs) != 1 else ''} before the index date",
            f"roughly {yrs:.0f} year{'s' if round(yrs) != 1 else ''} earlier",
        )

    def value(self, f: Finding) -> str:
        v = f.value
        if f.unit == "{score}":
            return f"{v}"
        if f.unit == "%":
            return f"{v}%"
        return f"{v} {f.unit}"

    def finding(self, f: Finding) -> str:
        """One finding as a clause, citing its code, drug or value and its date."""
        r = self.pick
        if f.key == "bmi_decline":
            return r(
                f"BMI falling from {f.name} to {f.value} kg/m2 between {self.date(f.first)} and {self.date(f.last)}",
                f"a drop in BMI to {f.value} kg/m2 by {self.date(f.last)}, down from {f.name} kg/m2",
                f"weight loss, with BMI sliding from {f.name} to {f.value} kg/m2 ({self.date(f.first)} to {self.date(f.last)})",
            )
        if f.key == "smoking_status":
            return r(
                f"a smoking status of '{f.value}' as of {self.date(f.last)}",
                f"continued smoking, still charted as '{f.value}' {self.on(f.last)}",
            )
        if f.short is not None:
            if f.unit == "{score}":
                return r(
                    f"{_article(f.short)} {f.short} score of {self.value(f)} {self.on(f.last)}",
                    f"{f.short} {self.value(f)} ({self.date(f.last)})",
                    f"{_article(f.short)} {f.short} result of {self.value(f)} recorded {self.date(f.last)}",
                )
            return r(
                f"{_article(f.short)} {f.short} of {self.value(f)} {self.on(f.last)}",
                f"{f.short} at {self.value(f)} ({self.date(f.last)})",
                f"a most recent {f.short} of {self.value(f)}, measured {self.date(f.last)}",
            )
        if f.drug is not None:
            times = f", refilled {f.count - 1} times" if f.count > 2 and self.rng.random() < 0.5 else ""
            return r(
                f"{f.drug} prescribed from {self.date(f.first)}{times}",
                f"a prescription for {f.drug} starting {self.date(f.first)}{times}",
                f"ongoing {f.drug}, a strongly anticholinergic drug, since {self.date(f.first)}",
            )
        times = f", coded {f.count} times" if f.count > 1 and self.rng.random() < 0.6 else ""
        return r(
            f"{f.label} ({f.code}) first recorded {self.date(f.first)}{times}",
            f"a diagnosis of {f.label} [{f.code}] dated {self.date(f.first)}",
            f"{f.code} ({f.label}) on the record from {self.date(f.first)}{times}",
            f"{f.label}, coded {f.code} since {self.date(f.first)}",
            f"documented {f.label} ({f.code}, {self.date(f.first)})",
        )

    def join(self, parts: list[str]) -> str:
        if len(parts) == 1:
            return parts[0]
        last = self.pick(" and ", ", and ", " as well as ")
        return ", ".join(parts[:-1]) + last + parts[-1]


def _article(word: str) -> str:
    """'a' or 'an' as the word is spoken (an HbA1c, an LDL, a MoCA, a PHQ-9)."""
    return "an" if word[:1] in "AEIOaeio" or word in ("HbA1c", "LDL") else "a"


def _article_age(age: int) -> str:
    """'an' before ages spoken with a vowel sound (an 80-year-old, an 18-year-old)."""
    return "an" if str(age).startswith("8") or age in (11, 18) else "a"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _split(findings: list[Finding]) -> tuple[list[Finding], list[Finding], list[Finding]]:
    cognitive = [f for f in findings if f.domain == "cognitive" and f.weight > 0]
    reassuring = [f for f in findings if f.domain == "reassurance"]
    other = [f for f in findings if f.domain not in ("cognitive", "reassurance") and f.weight > 0.04]
    return cognitive, other, reassuring


def _free_text(w: _Writer, findings: list[Finding], label: int | None) -> str:
    cognitive, other, reassuring = _split(findings)
    rng = w.rng
    sents: list[str] = []
    pos = label == 1
    if pos:
        sents.append(
            w.pick(
                f"This {w.age}-year-old {w.noun} went on to develop ADRD within five years, and the record before the index date shows why.",
                f"Looking back from a dementia diagnosis that followed within five years, several things in this {w.age}-year-old {w.noun}'s history stand out.",
                f"In hindsight the chart of this {w.age}-year-old {w.noun} carried a real burden of dementia risk.",
                f"The outcome was ADRD within five years, and at {w.age} this {w.noun} already had notable warning signs.",
            )
        )
    else:
        sents.append(
            w.pick(
                f"This {w.age}-year-old {w.noun} did not develop ADRD in the five years after the index date.",
                f"No dementia diagnosis followed in the five years after the index date for this {w.age}-year-old {w.noun}.",
                f"At {w.age}, this {w.noun} stayed free of ADRD through the five-year window.",
                f"The five years after the index date passed without an ADRD diagnosis for this {w.age}-year-old {w.noun}.",
            )
        )
    if cognitive:
        clause = w.join([w.finding(f) for f in cognitive[:2]])
        if pos:
            sents.append(
                _cap(
                    w.pick(
                        f"the clearest signal is cognitive: {clause}, the last of it {w.ago(cognitive[0].last)}.",
                        f"most telling is {clause}, a pattern that typically precedes a dementia diagnosis.",
                        f"cognitive symptoms were already on the record: {clause}.",
                    )
                )
            )
        else:
            sents.append(
                _cap(
                    w.pick(
                        f"there were some cognitive notes ({clause}), but they did not progress to dementia within the window.",
                        f"{clause} raised the question of cognitive decline, which in this case did not materialise.",
                    )
                )
            )
    elif pos:
        sents.append(
            w.pick(
                "No memory complaint or cognitive diagnosis had been coded yet, so the risk has to be read from other factors.",
                "Cognitive symptoms were not yet documented; the risk shows up instead in the rest of the record.",
            )
        )
    else:
        sents.append(
            w.pick(
                "Nothing in the record points to memory problems or cognitive decline.",
                "There are no memory complaints, no cognitive impairment codes and no other prodromal cognitive signs.",
                "The chart is silent on memory complaints or cognitive impairment.",
            )
        )
    if other:
        chosen = other[: rng.randint(2, 4)] if len(other) > 1 else other
        clause = w.join([w.finding(f) for f in chosen])
        if pos:
            sents.append(
                _cap(
                    w.pick(
                        f"on top of that the record shows {clause}.",
                        f"{clause} add to the picture.",
                        f"the modifiable risk factors are there too: {clause}.",
                        f"alongside this come {clause}.",
                    )
                )
            )
        else:
            sents.append(
                _cap(
                    w.pick(
                        f"the record does include {clause}, which raise risk in principle.",
                        f"risk factors such as {clause} were present, but they did not tip the balance.",
                        f"even with {clause}, the overall burden stayed moderate.",
                    )
                )
            )
    elif not pos:
        sents.append(
            w.pick(
                "Few of the modifiable risk factors are present.",
                "Vascular, metabolic and lifestyle risk factors are largely absent.",
            )
        )
    if not pos and reassuring:
        clause = w.join([w.finding(f) for f in reassuring[:2]])
        sents.append(
            _cap(
                w.pick(
                    f"reassuringly, the chart shows {clause}.",
                    f"{clause} also argue against a developing dementia.",
                    f"the measurements are reassuring: {clause}.",
                )
            )
        )
    age_note = (
        "advanced age"
        if w.age >= 80
        else "age in the mid-seventies or later"
        if w.age >= 74
        else "a comparatively young age"
    )
    if pos:
        sents.append(
            w.pick(
                f"Together with {age_note}, these findings make the later ADRD diagnosis unsurprising.",
                f"Combined with {age_note}, the risk over the next five years was high.",
                "Taken together, the balance of evidence pointed toward dementia onset within five years.",
            )
        )
    else:
        sents.append(
            w.pick(
                f"With {age_note} and no cognitive warning signs, a five-year risk below the average fits the outcome.",
                "Overall the evidence for imminent dementia was weak, consistent with no diagnosis in the window.",
                "On balance the record supports a low near-term risk, which is what happened.",
            )
        )
    return " ".join(sents)


def _stepwise(w: _Writer, findings: list[Finding], label: int | None) -> str:
    cognitive, other, reassuring = _split(findings)
    pos = label == 1
    vascular = [f for f in other if f.domain in ("vascular", "metabolic")]
    rest = [f for f in other if f.domain not in ("vascular", "metabolic")]
    steps: list[str] = []
    sex = {"F": "female", "M": "male"}.get(w.p.sex, "unknown sex")
    steps.append(
        w.pick(
            f"Age and sex: {w.age}-year-old {sex}; age is the strongest single risk factor for ADRD.",
            f"Demographics: {sex}, aged {w.age} at the index date, {'well into' if w.age >= 78 else 'within'} the ages where incidence climbs steeply.",
            f"Start with the baseline: {_article_age(w.age)} {w.age}-year-old {sex} patient.",
        )
    )
    if cognitive:
        steps.append(
            w.pick("Cognitive and prodromal signs: ", "Look for early cognitive signs: ", "Prodromal features: ")
            + "; ".join(w.finding(f) for f in cognitive[:3])
            + "."
        )
    else:
        steps.append(
            w.pick(
                "Cognitive and prodromal signs: none recorded before the index date.",
                "Look for early cognitive signs: no memory complaints, MCI or screening deficits are documented.",
                "Prodromal features: absent from the record.",
            )
        )
    if vascular:
        steps.append(
            w.pick("Vascular and metabolic risk: ", "Cardiometabolic factors: ", "Check vascular risk: ")
            + "; ".join(w.finding(f) for f in vascular[:3])
            + "."
        )
    else:
        steps.append(
            w.pick(
                "Vascular and metabolic risk: no hypertension, diabetes, obesity or high LDL on record.",
                "Cardiometabolic factors: none documented.",
            )
        )
    if rest:
        steps.append(
            w.pick("Other risk factors: ", "Mood, senses, lifestyle and medications: ", "Remaining risk factors: ")
            + "; ".join(w.finding(f) for f in rest[:3])
            + "."
        )
    if reassuring and not pos:
        steps.append(
            w.pick("Reassuring findings: ", "Against the diagnosis: ")
            + "; ".join(w.finding(f) for f in reassuring[:2])
            + "."
        )
    n_risk = len(cognitive) + len(other)
    if pos:
        steps.append(
            w.pick(
                f"Weigh it up: {n_risk} risk finding{'s' if n_risk != 1 else ''} on top of age{', including cognitive signs' if cognitive else ''}; the five-year risk is high, and ADRD did follow.",
                "Conclusion: the combination points to ADRD onset within five years, which is what occurred.",
                "Overall: high risk; the patient developed ADRD within the window.",
            )
        )
    else:
        steps.append(
            w.pick(
                f"Weigh it up: {'no cognitive signs and ' if not cognitive else ''}{n_risk} risk finding{'s' if n_risk != 1 else ''}; the five-year risk is modest, and no ADRD followed.",
                "Conclusion: the evidence does not point to dementia within five years, and none was diagnosed.",
                "Overall: low to moderate risk; no ADRD in the window.",
            )
        )
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, start=1))


def write_rationales(p: Patient, rng: random.Random) -> Rationales:
    """A free-text and a step-by-step rationale for a patient with a known label."""
    findings = collect_findings(p)
    return Rationales(
        free_text=_free_text(_Writer(p, rng), findings, p.label), stepwise=_stepwise(_Writer(p, rng), findings, p.label)
    )
