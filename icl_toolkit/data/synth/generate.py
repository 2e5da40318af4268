"""Turn sampled features into dated health records, outcomes, rationales and splits.

Each patient's record is drawn from its own random stream (seeded from the
cohort seed and the patient's position), so a cohort is a pure function of
``(n, seed, prevalence)``.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Event, EventKind, Label, Patient, SplitName
from icl_toolkit.data.synth import vocab
from icl_toolkit.data.synth.rationales import write_rationales
from icl_toolkit.data.synth.risk import (
    PRODROMAL_RR,
    RISK_FACTOR_RR,
    SIGNALS,
    Dynamics,
    Population,
    Signal,
    sample_dynamics,
    sample_population,
    true_risk,
)

__all__ = [
    "SynthConfig",
    "Disparity",
    "parse_disparity",
    "generate_cohort",
    "iter_synthetic_patients",
    "parse_split",
    "assign_splits",
]

GENERATOR_VERSION = "icl-synth-1"
_EPOCH = dt.date(1970, 1, 1)
# what metadata.true_factors lists: risk factors that count in the model, and prodromal signals
_RISK_KEYS = (*RISK_FACTOR_RR, *PRODROMAL_RR)
_YEAR = 365.25


@dataclass(frozen=True)
class Disparity:
    """An access-to-care disparity: one group has the same true risk but its records show less.

    A share of patients, drawn independently of every risk feature (so the true risk does not depend on the
    group), gets ``groups[attribute] = limited``; the others ``standard``. The limited group has
    ``visit_factor`` times the visit rate (fewer visits, so fewer measurements and fewer chances to code), each
    true condition is coded with ``coding_factor`` times the usual probability (under-coding), and a chronic
    diagnosis is first coded only at a visit at least ``delay_years`` after its onset (later coding).

    Attributes:
        share: fraction of patients in the limited group, in (0, 1).
        visit_factor: visit-rate multiplier of the limited group, in (0, 1].
        coding_factor: coding-probability multiplier of the limited group, in (0, 1].
        delay_years: extra years before a chronic condition is first coded, >= 0.
        attribute: the group attribute's name in ``Patient.groups``.
    """

    share: float = 0.3
    visit_factor: float = 0.5
    coding_factor: float = 0.6
    delay_years: float = 1.0
    attribute: str = "access"

    STANDARD = "standard"
    LIMITED = "limited"

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise ConfigError(f"--disparity: share must be in (0, 1). Got {self.share!r}.")
        for name in ("visit_factor", "coding_factor"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"--disparity: {name} must be in (0, 1]. Got {getattr(self, name)!r}.")
        if not 0.0 <= self.delay_years <= 10.0:
            raise ConfigError(f"--disparity: delay_years must be in [0, 10]. Got {self.delay_years!r}.")
        if not self.attribute.replace("_", "").isalnum():
            raise ConfigError(
                f"--disparity: attribute must be a name of letters, digits and '_'. Got {self.attribute!r}."
            )


def parse_disparity(text: str) -> Disparity:
    """``default`` (or ``on``), or comma-separated ``key=value`` pairs overriding the defaults of
    :class:`Disparity`: ``share=0.3,visit_factor=0.5,coding_factor=0.6,delay_years=1,attribute=access``."""
    text = text.strip()
    if text.lower() in ("default", "on", "yes", "true", ""):
        return Disparity()
    known = {"share", "visit_factor", "coding_factor", "delay_years", "attribute"}
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ConfigError(
                f"--disparity expects 'default' or KEY=VALUE pairs with keys {sorted(known)}, "
                f"e.g. 'share=0.3,visit_factor=0.5'. Got {part!r}."
            )
        if key == "attribute":
            values[key] = value.strip()
            continue
        try:
            values[key] = float(value)
        except ValueError:
            raise ConfigError(f"--disparity: {key} must be a number. Got {value!r}.") from None
    return Disparity(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Access:
    """How much of one patient's health the record shows (1, 1, 0 for everyone without a disparity)."""

    visit_factor: float = 1.0
    coding_factor: float = 1.0
    delay_years: float = 0.0


_FULL_ACCESS = _Access()


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the synthetic cohort generator.

    Attributes:
        n: number of patients (>= 1).
        seed: random seed; the same seed gives the same cohort.
        prevalence: target mean 5-year ADRD risk, in (0, 1); 0.15 by default.
        window_years: the prediction window after the index date (5).
        rationales: write a free-text and a step-by-step rationale per patient.
        split: fractions per split name (train/val/test) or None for no split.
        disparity: an access-to-care disparity (:class:`Disparity`), or None for none.
        signal: ``presence`` (the risk depends on which conditions a patient has, and when prodromal signs
            began) or ``trajectory`` (also on how the history unfolds: a falling cognitive score and BMI across
            visits, visits getting denser, memory complaints before falls; see
            :mod:`icl_toolkit.data.synth.risk`). ``presence`` is the cohort of every earlier release, byte for
            byte.
    """

    n: int
    seed: int = 0
    prevalence: float = 0.15
    window_years: float = 5.0
    rationales: bool = True
    split: dict[str, float] | None = None
    disparity: Disparity | None = None
    signal: Signal = "presence"

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ConfigError(f"--signal must be one of {', '.join(SIGNALS)}. Got {self.signal!r}.")
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"The 'n' parameter must be an int >= 1. Got {self.n!r} instead.")
        if not 0.01 <= self.prevalence <= 0.6:
            raise ConfigError(f"The 'prevalence' parameter must be in [0.01, 0.6]. Got {self.prevalence!r} instead.")
        if self.split is not None:
            _check_split(self.split)


def _check_split(split: dict[str, float]) -> None:
    bad = sorted(set(split) - {"train", "val", "test"})
    if bad:
        raise ConfigError(f"Unknown split name(s) {bad}; allowed: train, val, test.")
    if any(v < 0 for v in split.values()) or not math.isclose(sum(split.values()), 1.0, abs_tol=1e-6):
        raise ConfigError(f"Split fractions must be >= 0 and sum to 1. Got {split} (sum {sum(split.values()):.3f}).")


def parse_split(text: str) -> dict[str, float]:
    """Parse ``train=0.7,val=0.1,test=0.2`` into a dict, checking names and sum."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"The 'split' option expects NAME=FRACTION pairs such as 'train=0.7,val=0.1,test=0.2'. Got {text!r}."
            ) from None
    _check_split(out)
    return out


def assign_splits(labels: Sequence[int | None], fractions: dict[str, float], seed: int) -> list[str]:
    """Patient-disjoint splits, stratified by label, deterministic for a seed."""
    rng = np.random.default_rng([seed, 7919])
    names = [k for k in ("train", "val", "test") if k in fractions]
    out = [""] * len(labels)
    groups: dict[object, list[int]] = {}
    for i, y in enumerate(labels):
        groups.setdefault(y, []).append(i)
    for key in sorted(groups, key=str):
        idx = np.array(groups[key])
        rng.shuffle(idx)
        bounds = np.round(np.cumsum([fractions[k] for k in names]) * len(idx)).astype(int)
        start = 0
        for name, end in zip(names, bounds):
            for i in idx[start:end]:
                out[int(i)] = name
            start = end
    return out


# ----------------------------------------------------------------------- per patient


class _Record:
    """Collects one patient's events while they are generated."""

    __slots__ = ("index", "events", "rng")

    def __init__(self, index: dt.date, rng: random.Random) -> None:
        self.index = index
        self.events: list[Event] = []
        self.rng = rng

    def date_at(self, years_before: float) -> dt.date:
        return self.index - dt.timedelta(days=max(1, int(round(years_before * _YEAR))))

    def add(
        self, date: dt.date, kind: str, code: vocab.Code, value: float | str | None = None, unit: str | None = None
    ) -> None:
        self.events.append(Event(date, cast(EventKind, kind), code.code, code.system, code.name, value, unit))

    def measure(self, date: dt.date, key: str, value: float) -> None:
        spec = vocab.MEASURES[key]
        v = round(float(value), spec.decimals)
        self.add(date, spec.kind, spec.code, int(v) if spec.decimals == 0 else v, spec.unit)


def _gauss(rng: random.Random, mu: float, sd: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, rng.gauss(mu, sd)))


def _visit_plan(rec: _Record, span: float, age: float, n_visits: int) -> list[tuple[float, str]]:
    rng = rec.rng
    times = sorted((rng.uniform(0.02, span) for _ in range(n_visits)), reverse=True)
    times[0] = span  # the record starts with a visit
    plan = []
    for t in times:
        r = rng.random()
        age_then = age - t
        if r < 0.05:
            kind = "emergency"
        elif r < 0.07:
            kind = "inpatient"
        elif r < 0.17 and age_then >= 65:
            kind = "wellness"
        elif r < 0.27:
            kind = "office_long"
        else:
            kind = "office"
        plan.append((t, kind))
    return plan


def _pick_drug(spec: vocab.ConditionSpec, rng: random.Random, anticholinergic: bool) -> vocab.Code:
    """Choose a drug; strong anticholinergics only for patients flagged as exposed."""
    stems = [d.name.split(" ")[0] for d in spec.drugs]
    allowed = [d for d, s in zip(spec.drugs, stems) if (s in vocab.ANTICHOLINERGIC_DRUGS) == anticholinergic]
    if not allowed:
        allowed = [d for d, s in zip(spec.drugs, stems) if s not in vocab.ANTICHOLINERGIC_DRUGS] or list(spec.drugs)
    return rng.choice(allowed)


def _accelerate(rec: _Record, visits: list[tuple[float, str]], rate: float, factor: float) -> list[tuple[float, str]]:
    """The trajectory signal's visits: the rate in the last two years times ``factor`` (extra office visits
    when above 1, visits dropped when below; the record's first visit is kept)."""
    rng = rec.rng
    recent = min(2.0, visits[0][0])
    if factor >= 1.0:
        n_extra = int(np.random.default_rng(rng.getrandbits(32)).poisson(rate * recent * (factor - 1.0)))
        extra = [(rng.uniform(0.02, recent), "office") for _ in range(n_extra)]
        kept = visits + extra
    else:
        kept = [v for j, v in enumerate(visits) if j == 0 or v[0] >= recent or rng.random() < factor]
    return sorted(kept, key=lambda v: -v[0])


def _patient_events(
    pop: Population, i: int, rec: _Record, access: _Access = _FULL_ACCESS, dyn: Dynamics | None = None
) -> None:
    rng = rec.rng
    span = float(pop.span[i])
    age = float(pop.age[i])
    female = bool(pop.female[i])
    rate = pop.visit_rate[i] * access.visit_factor
    n_visits = max(3, int(np.random.default_rng(rng.getrandbits(32)).poisson(rate * span)))
    visits = _visit_plan(rec, span, age, n_visits)
    if dyn is not None:
        visits = _accelerate(rec, visits, float(rate), math.exp(0.5 * float(dyn.acceleration[i])))
    for t, kind in visits:
        rec.add(rec.date_at(t), "visit", vocab.VISITS[kind])

    present = {k: bool(pop.present[k][i]) for k in vocab.CONDITIONS}
    onset = {k: float(pop.onset[k][i]) for k in vocab.CONDITIONS if present[k]}
    exposed_ach = present["anticholinergic"]
    started: dict[str, float] = {}  # condition -> years before index its drug started
    coded: dict[str, float] = {}  # condition -> years before index it was first coded

    # ---- diagnoses and drugs
    for key, t0 in onset.items():
        spec = vocab.CONDITIONS[key]
        if key == "anticholinergic":
            # exposure comes through a drug of another treated condition when
            # there is one, else through a bladder antimuscarinic
            continue
        if rng.random() >= spec.record_prob * access.coding_factor:
            continue
        delay = 0.0 if spec.episodic else access.delay_years
        after = [(t, k) for t, k in visits if t <= t0 - delay + 1e-9]
        if not after:
            continue
        if spec.episodic:
            _episodes(rec, key, spec, t0, after, pop, i)
            coded[key] = after[0][0]
            continue
        code = spec.codes[0] if rng.random() < 0.75 or len(spec.codes) == 1 else rng.choice(spec.codes[1:])
        first_t = after[0][0]
        coded[key] = first_t
        rec.add(rec.date_at(first_t), "diagnosis", code)
        for t, _ in after[1:]:
            if rng.random() < spec.repeat_prob:
                rec.add(rec.date_at(t), "diagnosis", code)
        if spec.drugs and rng.random() < spec.treat_prob:
            drug = _pick_drug(spec, rng, exposed_ach and key in ("depression", "sleep", "anxiety"))
            started[key] = first_t
            _refills(rec, drug, first_t, after)
            if key in ("depression", "sleep", "anxiety") and drug.name.split(" ")[0] in vocab.ANTICHOLINERGIC_DRUGS:
                started["anticholinergic"] = first_t
    if exposed_ach and "anticholinergic" not in started:
        t0 = onset["anticholinergic"]
        after = [(t, k) for t, k in visits if t <= t0 - access.delay_years + 1e-9]
        if after:
            spec = vocab.CONDITIONS["anticholinergic"]
            if rng.random() < spec.record_prob * access.coding_factor:
                rec.add(rec.date_at(after[0][0]), "diagnosis", spec.codes[0])
            drug = rng.choice(spec.drugs)
            started["anticholinergic"] = after[0][0]
            _refills(rec, drug, after[0][0], after)

    # ---- procedures tied to conditions
    if present["hearing_loss"] and "hearing_loss" in coded:
        t = coded["hearing_loss"]
        if rng.random() < 0.6:
            rec.add(rec.date_at(t), "procedure", vocab.PROCEDURES["audiometry"])
        if pop.hearing_aid[i]:
            rec.add(rec.date_at(max(0.05, t - 0.3)), "procedure", vocab.PROCEDURES["hearing_aid"])
    if present["vision_loss"] and pop.cataract_surgery[i]:
        t = max(0.05, onset["vision_loss"] - rng.uniform(0.2, 1.5))
        rec.add(rec.date_at(t), "procedure", vocab.PROCEDURES["cataract_surgery"])
    if "mci" in coded:
        if rng.random() < 0.45:
            rec.add(rec.date_at(max(0.03, coded["mci"] - 0.1)), "procedure", vocab.PROCEDURES["mri_brain"])
        if rng.random() < 0.35:
            rec.add(rec.date_at(max(0.03, coded["mci"] - 0.2)), "procedure", vocab.PROCEDURES["neuropsych"])
    if present["osteoarthritis"] and rng.random() < 0.08:
        rec.add(rec.date_at(rng.uniform(0.1, span)), "procedure", vocab.PROCEDURES["knee_replacement"])
    if age - span < 76 and rng.random() < 0.3:
        rec.add(rec.date_at(rng.uniform(0.1, span)), "procedure", vocab.PROCEDURES["colonoscopy"])
    if female and rng.random() < 0.3:
        rec.add(rec.date_at(rng.uniform(0.1, span)), "procedure", vocab.PROCEDURES["dxa"])

    _measurements(pop, i, rec, visits, present, onset, started, dyn)


def _refills(rec: _Record, drug: vocab.Code, first_t: float, after: list[tuple[float, str]]) -> None:
    rec.add(rec.date_at(first_t), "medication", drug)
    for t, _ in after[1:]:
        if rec.rng.random() < 0.45:
            rec.add(rec.date_at(t), "medication", drug)


def _episodes(
    rec: _Record,
    key: str,
    spec: vocab.ConditionSpec,
    t0: float,
    after: list[tuple[float, str]],
    pop: Population,
    i: int,
) -> None:
    rng = rec.rng
    if key == "tbi":
        rec.add(rec.date_at(t0), "visit", vocab.VISITS["emergency"])
        rec.add(rec.date_at(t0), "diagnosis", rng.choice(spec.codes))
        if rng.random() < 0.7:
            rec.add(rec.date_at(t0), "procedure", vocab.PROCEDURES["ct_head"])
        return
    if key == "falls":
        n = 1 + min(3, int(rng.expovariate(0.9)))
        times = sorted((rng.uniform(0.02, t0) for _ in range(n - 1)), reverse=True)
        for j, t in enumerate([t0, *times]):
            rec.add(rec.date_at(t), "visit", vocab.VISITS["emergency" if rng.random() < 0.5 else "office"])
            rec.add(rec.date_at(t), "diagnosis", spec.codes[0] if j == 0 else rng.choice(spec.codes))
            if rng.random() < 0.3:
                rec.add(rec.date_at(t), "procedure", vocab.PROCEDURES["ct_head"])
        return
    # infections: a few episodes over the record, each at a visit
    for t, _ in after:
        if rng.random() < 0.12:
            rec.add(rec.date_at(t), "diagnosis", spec.codes[0])
            if spec.drugs and rng.random() < spec.treat_prob:
                rec.add(rec.date_at(t), "medication", spec.drugs[0])


def _measurements(
    pop: Population,
    i: int,
    rec: _Record,
    visits: list[tuple[float, str]],
    present: dict[str, bool],
    onset: dict[str, float],
    started: dict[str, float],
    dyn: Dynamics | None = None,
) -> None:
    rng = rec.rng
    female = bool(pop.female[i])
    age = float(pop.age[i])
    span = float(pop.span[i])

    def active(key: str, t: float) -> bool:
        return present[key] and onset[key] >= t

    def treated(key: str, t: float) -> bool:
        return key in started and started[key] >= t

    bmi0 = _gauss(rng, 33.5 if present["obesity"] else 26.0, 2.5, 17.5, 48.0)
    if present["obesity"]:
        bmi0 = max(bmi0, 30.5)
    else:
        bmi0 = min(bmi0, 29.5)
    sbp_offset = rng.gauss(0, 6)
    egfr0 = 98 - 0.75 * (age - 40) + rng.gauss(0, 7)
    former = bool(pop.former_smoker[i])
    for t, kind in visits:
        if kind in ("emergency", "inpatient") and rng.random() < 0.5:
            continue
        d = rec.date_at(t)
        age_then = age - t
        if rng.random() < 0.6:
            sbp = 121 + 0.35 * (age_then - 70) + sbp_offset
            if active("hypertension", t):
                sbp += 19 - (11 if treated("hypertension", t) else 0)
            sbp += rng.gauss(0, 8)
            rec.measure(d, "sbp", min(215, max(88, sbp)))
            rec.measure(d, "dbp", min(125, max(45, 0.42 * sbp + 22 + rng.gauss(0, 5))))
        if rng.random() < 0.45:
            bmi = bmi0
            if active("weight_loss", t):
                bmi -= 3.2 * (onset["weight_loss"] - t) / max(onset["weight_loss"], 0.5) + 0.8
            if dyn is not None:
                bmi -= 0.12 * float(dyn.weight[i]) * (span - t)
            rec.measure(d, "bmi", max(15.0, bmi + rng.gauss(0, 0.4)))
        if rng.random() < 0.22:
            ldl = 166.0 if active("high_ldl", t) else 108.0
            if treated("high_ldl", t):
                ldl *= 0.65
            rec.measure(d, "ldl", max(35, ldl + rng.gauss(0, 18)))
        dm = active("diabetes", t)
        if rng.random() < (0.5 if dm else 0.1):
            a1c = 7.5 - (0.5 if treated("diabetes", t) else 0) if dm else (6.0 if present["diabetes"] else 5.5)
            rec.measure(d, "hba1c", min(13.5, max(4.3, a1c + rng.gauss(0, 0.6 if dm else 0.25))))
        if rng.random() < 0.2:
            egfr = 47 + rng.gauss(0, 6) if active("ckd", t) else egfr0 + 0.75 * t + rng.gauss(0, 5)
            rec.measure(d, "egfr", min(125, max(12, egfr)))
        if rng.random() < (0.25 if present["hypothyroidism"] else 0.04):
            tsh = 2.2 if not active("hypothyroidism", t) or treated("hypothyroidism", t) else 7.5
            rec.measure(d, "tsh", max(0.05, tsh * math.exp(rng.gauss(0, 0.3))))
        if rng.random() < (0.35 if active("memory_complaints", t) or active("mci", t) else 0.02):
            rec.measure(d, "b12", _gauss(rng, 460, 150, 110, 1400))
        if rng.random() < 0.1:
            rec.measure(d, "hemoglobin", _gauss(rng, 13.0 if female else 14.2, 1.1, 8.0, 18.0))
        cognitive = active("mci", t) or active("memory_complaints", t)
        if dyn is not None:  # the trajectory signal: a score at many visits, falling at the patient's own speed
            if rng.random() < 0.45:
                moca = float(dyn.baseline_moca[i]) - 0.25 * math.exp(0.6 * float(dyn.cognitive[i])) * (span - t)
                moca -= (2.0 if active("memory_complaints", t) else 0.0) + (4.5 if active("mci", t) else 0.0)
                rec.measure(d, "moca", min(30, max(5, moca + rng.gauss(0, 1.0))))
        elif (kind == "wellness" and rng.random() < 0.4) or (cognitive and rng.random() < 0.3):
            moca = 27.2 - 0.06 * (age_then - 75)
            if active("memory_complaints", t):
                moca -= 2.0
            if active("mci", t):
                moca -= 4.5
            rec.measure(d, "moca", min(30, max(10, moca + rng.gauss(0, 1.4))))
        if rng.random() < (0.35 if active("depression", t) else 0.05):
            rec.measure(d, "phq9", min(27, max(0, (12.5 if active("depression", t) else 3) + rng.gauss(0, 3))))
        if rng.random() < 0.06 or (active("alcohol", t) and rng.random() < 0.15):
            rec.measure(d, "auditc", min(12, max(0, (7 if active("alcohol", t) else 1.5) + rng.gauss(0, 1.5))))
        if rng.random() < 0.12:
            status = (
                "Current every day smoker"
                if active("smoking", t)
                else "Former smoker"
                if former or present["smoking"]
                else "Never smoker"
            )
            rec.add(d, "observation", vocab.SMOKING_STATUS, status)
        if active("social_isolation", t) and rng.random() < 0.12:
            rec.add(d, "observation", vocab.LIVES_ALONE)
        if kind in ("office", "office_long") and d.month >= 10 and rng.random() < 0.5:
            rec.add(d, "procedure", vocab.PROCEDURES["flu_vaccine"])


def _day_to_date(day: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=int(day))


def iter_synthetic_patients(config: SynthConfig, progress: Callable[[int], None] | None = None) -> Iterator[Patient]:
    """Yield the cohort's patients in order (deterministic for the config)."""
    rng = np.random.default_rng(config.seed)
    pop = sample_population(config.n, rng)
    # the trajectory signal's dynamics come from a stream of their own: every other draw is as in presence
    dyn = (
        sample_dynamics(config.n, np.random.default_rng([config.seed, 2718])) if config.signal == "trajectory" else None
    )
    risk = true_risk(pop, config.prevalence, dyn)
    labels = (rng.random(config.n) < risk).astype(int)
    onset_years = rng.uniform(0.05, config.window_years, config.n)
    splits = assign_splits(labels.tolist(), config.split, config.seed) if config.split else None
    d = config.disparity
    # drawn from a stream of its own, independent of every risk feature: the groups share one true risk model
    limited = (np.random.default_rng([config.seed, 31337]).random(config.n) < d.share) if d else None
    limited_access = _Access(d.visit_factor, d.coding_factor, d.delay_years) if d else _FULL_ACCESS
    width = max(6, len(str(config.n)))
    for i in range(config.n):
        prng = random.Random(config.seed * 1_000_003 + i)
        index = _day_to_date(int(pop.index_day[i]))
        rec = _Record(index, prng)
        is_limited = bool(limited is not None and limited[i])
        _patient_events(pop, i, rec, limited_access if is_limited else _FULL_ACCESS, dyn)
        rec.events.sort(key=lambda e: (e.date, e.kind, e.code))
        birth = index - dt.timedelta(days=int(round(float(pop.age[i]) * _YEAR)))
        label = int(labels[i])
        outcome = index + dt.timedelta(days=max(1, int(onset_years[i] * _YEAR))) if label else None
        factors = [k for k in _RISK_KEYS if pop.present[k][i] and (k not in RISK_FACTOR_RR or pop.risk_factor(k)[i])]
        p = Patient(
            patient_id=f"S{config.seed}-{i + 1:0{width}d}",
            sex="F" if pop.female[i] else "M",
            birth_date=birth,
            index_date=index,
            events=rec.events,
            label=cast(Label, label),
            outcome_date=outcome,
            split=cast(SplitName | None, splits[i] if splits else None),
            metadata={"true_risk": round(float(risk[i]), 6), "true_factors": factors, "generator": GENERATOR_VERSION}
            | (_dynamics_metadata(pop, dyn, i) if dyn is not None else {}),
            groups={d.attribute: Disparity.LIMITED if is_limited else Disparity.STANDARD} if d else {},
        )
        if config.rationales:
            p.rationales = write_rationales(p, prng)
        if progress is not None:
            progress(1)
        yield p


def _dynamics_metadata(pop: Population, dyn: Dynamics, i: int) -> dict[str, object]:
    from icl_toolkit.data.synth.risk import memory_before_falls

    return {
        "signal": "trajectory",
        "true_dynamics": {
            "cognitive_decline_z": round(float(dyn.cognitive[i]), 4),
            "weight_loss_z": round(float(dyn.weight[i]), 4),
            "visit_acceleration_z": round(float(dyn.acceleration[i]), 4),
            "memory_before_falls": bool(memory_before_falls(pop)[i]),
        },
    }


def generate_cohort(config: SynthConfig) -> list[Patient]:
    """The whole synthetic cohort as a list (see :func:`iter_synthetic_patients`)."""
    return list(iter_synthetic_patients(config))
