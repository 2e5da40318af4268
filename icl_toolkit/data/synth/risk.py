"""The known risk model of the synthetic cohort: who has what, and the true 5-year ADRD risk.

Population features are drawn jointly (vectorised), then the true risk of ADRD
onset within five years after the index date is a logistic function of them::

    logit(risk) = b0
                + ln(OR_age) * (age - 75) / 5
                + ln(OR_female) * female
                + sum_f  ln(RR_f) * [risk factor f present]
                + sum_p  ln(RR_p) * w(t_p) * [prodromal signal p present]
                + LATENT_WEIGHT * u            (unobserved preclinical pathology)

Relative risks are used as odds ratios; at a 10-20% outcome rate this
overstates them slightly, which is acceptable for a synthetic benchmark. The
timing weight ``w`` gives prodromal signals their published shape: recent ones
matter most (see :func:`timing_weight`). ``u`` is standard normal and never
written to the record, so the oracle AUROC (ranking by the true risk) is an
upper bound that no model reading the history can reach. ``b0`` is solved so
the mean risk equals the requested prevalence on a fixed reference sample
(independent of the cohort's seed and size).

Risk factors are correlated through latent factors (cardiometabolic ``c``,
psychosocial ``s``) and rise with age, as they do in real populations.

**The ``trajectory`` signal** (``icl data synth --signal trajectory``) adds terms that only the way a history
unfolds shows, so that which codes are present cannot reach the oracle::

    + DYNAMICS_WEIGHT["cognitive"]    * z_cog     (how fast the cognitive score falls across visits)
    + DYNAMICS_WEIGHT["weight"]       * z_wt      (how fast BMI falls across visits)
    + DYNAMICS_WEIGHT["acceleration"] * z_acc     (visits denser in the last two years than before)
    + ORDER_BONUS * [memory complaints began before the first fall]

``z_cog``, ``z_wt`` and ``z_acc`` are standard normal, drawn from a stream of their own and independent of every
other feature; the generator writes them into the record as a MoCA score measured at many visits and declining
``0.25 * exp(0.6 z_cog)`` points a year from a personal baseline, a BMI drifting ``-0.12 z_wt`` a year, and a visit
rate multiplied by ``exp(0.5 z_acc)`` in the last two years. A MoCA code or a BMI code is present for almost
everyone, so presence says nothing about them: their values over time do. Cognitive decline of this kind
precedes a dementia diagnosis by years (e.g. Wilson et al. 2012, Neuropsychology 26:357), as do weight loss and
rising health-care use; the weights here are chosen to make the signal strong enough to measure at 2,000
patients, not taken from a study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, get_args

import numpy as np

from icl_toolkit.core.errors import ConfigError

__all__ = [
    "AGE_OR_PER_5Y",
    "FEMALE_OR",
    "RISK_FACTOR_RR",
    "PRODROMAL_RR",
    "LATENT_WEIGHT",
    "Population",
    "sample_population",
    "risk_logit",
    "intercept_for",
    "true_risk",
    "timing_weight",
    "Dynamics",
    "DYNAMICS_WEIGHT",
    "ORDER_BONUS",
    "sample_dynamics",
    "SIGNALS",
    "Signal",
]

# --- demographic effects -----------------------------------------------------------
# Dementia incidence roughly doubles every 5.9 years of age after 65
# (Jorm & Jolley 1998, Neurology 51:728-733): 2 ** (5 / 5.9) = 1.80 per 5 years.
AGE_OR_PER_5Y = 1.80
# Sex differences in incidence are small or absent in pooled cohorts (Beam et
# al. 2018, J Alzheimers Dis 64:1077-1083), with a slight excess in women at the
# oldest ages; a small effect is used.
FEMALE_OR = 1.10

# --- modifiable risk factors ---------------------------------------------------------
# Relative risks from the 2024 Lancet Commission on dementia prevention,
# intervention and care (Livingston et al. 2024, Lancet 404:572-628, Figure 7 /
# the risk-factor table): the twelve that a health record can show.
RISK_FACTOR_RR: dict[str, float] = {
    "hearing_loss": 1.37,  # untreated; hearing-aid users carry no excess risk
    "high_ldl": 1.27,  # high LDL cholesterol (midlife)
    "depression": 2.2,
    "tbi": 1.69,  # traumatic brain injury
    "inactivity": 1.17,  # physical inactivity
    "diabetes": 1.73,
    "smoking": 1.3,
    "hypertension": 1.2,
    "obesity": 1.3,
    "alcohol": 1.18,  # excessive alcohol consumption
    "social_isolation": 1.6,
    "vision_loss": 1.47,  # untreated vision loss
}

# --- prodromal signals ---------------------------------------------------------------
PRODROMAL_RR: dict[str, float] = {
    # MCI: 14.9% two-year cumulative dementia incidence in people over 65
    # (Petersen et al. 2018 AAN guideline, Neurology 90:126-135) against about
    # 3% in the general population of that age: roughly fivefold.
    "mci": 5.0,
    # Subjective memory complaints: RR 2.17 for dementia
    # (Mitchell et al. 2014, Acta Psychiatr Scand 130:439-451).
    "memory_complaints": 2.17,
    # Fall-related injury: HR 1.21 for a new dementia diagnosis within a year
    # (Ordoobadi et al. 2024, JAMA Network Open).
    "falls": 1.21,
    # Weight loss before diagnosis: each unit of annual BMI decline carried
    # about 35% higher AD risk (Buchman et al. 2005, Neurology 65:892-897).
    "weight_loss": 1.35,
    # Anxiety: pooled risk ratios of about 1.2-1.3 for all-cause dementia in
    # meta-analyses (e.g. Santabarbara et al. 2020); 1.24 is used.
    "anxiety": 1.24,
    # Sleep disturbance: RR 1.19 for all-cause dementia
    # (Shi et al. 2018, Sleep Med Rev 40:4-16).
    "sleep": 1.19,
    # Strong anticholinergic drugs: adjusted OR 1.49 for the highest exposure
    # (Coupland et al. 2019, JAMA Intern Med 179:1084-1093).
    "anticholinergic": 1.49,
}

# Weight of the unobserved preclinical pathology u ~ N(0, 1) on the logit.
LATENT_WEIGHT = 0.7

# --- the trajectory signal (see the module docstring) ----------------------------------
Signal = Literal["presence", "trajectory"]
SIGNALS: tuple[str, ...] = get_args(Signal)
DYNAMICS_WEIGHT: dict[str, float] = {"cognitive": 0.9, "weight": 0.6, "acceleration": 0.6}
ORDER_BONUS = 0.7
"""Logit added when memory complaints began before the first fall (both present)."""


@dataclass
class Dynamics:
    """How each patient's history unfolds (the ``trajectory`` signal): standard-normal speeds of cognitive
    decline and weight loss, and the acceleration of visits in the last two years."""

    cognitive: np.ndarray
    weight: np.ndarray
    acceleration: np.ndarray
    baseline_moca: np.ndarray


def sample_dynamics(n: int, rng: np.random.Generator) -> Dynamics:
    """Draw the dynamics of ``n`` patients (independent of every other feature)."""
    return Dynamics(
        cognitive=rng.standard_normal(n),
        weight=rng.standard_normal(n),
        acceleration=rng.standard_normal(n),
        baseline_moca=rng.normal(27.6, 1.3, n),
    )


def timing_weight(years_before_index: np.ndarray | float, key: str = "") -> np.ndarray:
    """How much a prodromal signal counts, given when it first appeared.

    Signals within 2 years of the index date count fully, 2-5 years 0.6, older
    0.3: prodromal features cluster in the few years before a dementia diagnosis
    (e.g. falls, weight loss and mood change in the 2-5 years before; see the
    sources above). Anticholinergic burden is the exception: longer exposure
    matters more (Coupland 2019), so 3+ years of use counts fully, less 0.6.
    """
    t = np.asarray(years_before_index, dtype=float)
    if key == "anticholinergic":
        return np.where(t >= 3.0, 1.0, 0.6)
    return np.where(t <= 2.0, 1.0, np.where(t <= 5.0, 0.6, 0.3))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# prevalence at age 75 (latent factors at 0) and loadings: (p75, c, s, u, per-year age slope)
_RF_PARAMS: dict[str, tuple[float, float, float, float, float]] = {
    "hypertension": (0.55, 0.8, 0.0, 0.0, 0.03),
    "diabetes": (0.20, 0.9, 0.0, 0.0, 0.01),
    "obesity": (0.30, 1.0, 0.1, 0.0, -0.02),
    "high_ldl": (0.30, 0.6, 0.0, 0.0, 0.0),
    "hearing_loss": (0.30, 0.0, 0.0, 0.0, 0.08),
    "depression": (0.13, 0.0, 1.0, 0.2, 0.0),
    "tbi": (0.04, 0.0, 0.3, 0.0, 0.02),
    "smoking": (0.11, 0.2, 0.8, 0.0, -0.04),
    "alcohol": (0.06, 0.0, 0.9, 0.0, -0.02),
    "inactivity": (0.30, 0.6, 0.4, 0.0, 0.03),
    "social_isolation": (0.18, 0.0, 0.9, 0.1, 0.03),
    "vision_loss": (0.18, 0.0, 0.0, 0.0, 0.07),
}
_PRODROMAL_PARAMS: dict[str, tuple[float, float, float, float, float]] = {
    "memory_complaints": (0.08, 0.0, 0.3, 1.1, 0.05),
    "mci": (0.035, 0.0, 0.0, 1.4, 0.06),
    "falls": (0.10, 0.0, 0.0, 0.5, 0.07),
    "weight_loss": (0.05, 0.0, 0.0, 0.6, 0.04),
    "anxiety": (0.09, 0.0, 0.8, 0.3, 0.0),
    "sleep": (0.14, 0.0, 0.5, 0.3, 0.0),
    "anticholinergic": (0.07, 0.0, 0.4, 0.0, 0.02),
}
# unrelated conditions: (p75 female, p75 male, c loading, age slope)
_NOISE_PARAMS: dict[str, tuple[float, float, float, float]] = {
    "osteoarthritis": (0.32, 0.26, 0.3, 0.03),
    "gerd": (0.20, 0.18, 0.2, 0.0),
    "hypothyroidism": (0.16, 0.05, 0.0, 0.01),
    "bph": (0.0, 0.35, 0.0, 0.04),
    "osteoporosis": (0.22, 0.04, -0.2, 0.05),
    "atrial_fibrillation": (0.07, 0.10, 0.3, 0.06),
    "ckd": (0.13, 0.14, 0.6, 0.06),
    "copd": (0.07, 0.09, 0.2, 0.02),
    "back_pain": (0.22, 0.20, 0.2, 0.0),
    "rhinitis": (0.15, 0.13, 0.0, -0.02),
    "vitamin_d": (0.16, 0.12, 0.2, 0.0),
    "gout": (0.03, 0.09, 0.5, 0.02),
    "cad": (0.09, 0.16, 0.6, 0.05),
    "presbyopia": (0.35, 0.35, 0.0, 0.0),
    "actinic_keratosis": (0.08, 0.12, 0.0, 0.03),
    "uri": (0.35, 0.30, 0.0, 0.0),
    "uti": (0.28, 0.08, 0.0, 0.02),
}


@dataclass
class Population:
    """Features of n synthetic patients, one array per feature.

    ``present[k]`` says whether condition k is truly present by the index date
    (recorded or not); ``onset[k]`` is when it began, in years before the index
    date (NaN when absent). ``hearing_aid`` and ``cataract_surgery`` mark the
    treated cases of hearing and vision loss, which carry no excess risk.
    """

    n: int
    age: np.ndarray
    female: np.ndarray
    span: np.ndarray  # years of record before the index date
    index_day: np.ndarray  # index date as days since 1970-01-01
    visit_rate: np.ndarray  # visits per year
    c: np.ndarray
    s: np.ndarray
    u: np.ndarray
    present: dict[str, np.ndarray] = field(default_factory=dict)
    onset: dict[str, np.ndarray] = field(default_factory=dict)
    hearing_aid: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    cataract_surgery: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    former_smoker: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def risk_factor(self, key: str) -> np.ndarray:
        """Whether risk factor ``key`` counts in the risk model (treated sensory loss does not)."""
        x = self.present[key]
        if key == "hearing_loss":
            return x & ~self.hearing_aid
        if key == "vision_loss":
            return x & ~self.cataract_surgery
        return x


_INDEX_START = np.datetime64("2014-01-01").astype(int)
_INDEX_END = np.datetime64("2020-12-31").astype(int)


def sample_population(n: int, rng: np.random.Generator) -> Population:
    """Draw the features of ``n`` patients (ages 60-90 at the index date)."""
    age = 60.0 + 30.0 * rng.beta(1.3, 1.7, n)
    female = rng.random(n) < 0.56
    span = rng.uniform(5.0, 15.0, n)
    index_day = rng.integers(_INDEX_START, _INDEX_END + 1, n)
    c, s, u, h = (rng.standard_normal(n) for _ in range(4))
    sparse = rng.random(n) < 0.15
    visit_rate = np.where(sparse, rng.uniform(0.5, 1.0, n), np.exp(np.log(2.6) + 0.35 * h + 0.15 * c))
    pop = Population(
        n=n,
        age=age,
        female=female,
        span=span,
        index_day=index_day,
        visit_rate=np.clip(visit_rate, 0.4, 9.0),
        c=c,
        s=s,
        u=u,
    )
    a = age - 75.0
    for key, (p75, lc, ls, lu, slope) in _RF_PARAMS.items():
        lin = _logit(p75) + lc * c + ls * s + lu * u + slope * a
        if key == "alcohol":
            lin = lin + np.where(female, -0.7, 0.5)
        pop.present[key] = rng.random(n) < _sigmoid(lin)
        # half began before the record starts, the rest at some point within it
        before = rng.random(n) < 0.5
        pop.onset[key] = np.where(pop.present[key], np.where(before, span, rng.uniform(0.2, span)), np.nan)
    for key, (p75, lc, ls, lu, slope) in _PRODROMAL_PARAMS.items():
        lin = _logit(p75) + lc * c + ls * s + lu * u + slope * a
        pop.present[key] = rng.random(n) < _sigmoid(lin)
        if key == "anticholinergic":
            t = rng.uniform(0.3, span)
        else:
            t = np.minimum(span, 6.0) * rng.beta(1.2, 2.5, n)
        pop.onset[key] = np.where(pop.present[key], np.maximum(t, 0.05), np.nan)
    for key, (pf, pm, lc, slope) in _NOISE_PARAMS.items():
        prior = np.where(female, pf, pm)
        lin = np.log(np.maximum(prior, 1e-6) / np.maximum(1 - prior, 1e-6)) + lc * c + slope * a
        if key == "copd":
            lin = lin + 1.2 * pop.present["smoking"]
        pop.present[key] = (rng.random(n) < _sigmoid(lin)) & (p75 > 0)
        before = rng.random(n) < 0.4
        pop.onset[key] = np.where(pop.present[key], np.where(before, span, rng.uniform(0.2, span)), np.nan)
    pop.hearing_aid = pop.present["hearing_loss"] & (rng.random(n) < 0.3)
    pop.cataract_surgery = pop.present["vision_loss"] & (rng.random(n) < 0.45)
    pop.former_smoker = ~pop.present["smoking"] & (rng.random(n) < 0.38)
    return pop


def risk_logit(pop: Population, dyn: Dynamics | None = None) -> np.ndarray:
    """The logit of the true 5-year risk, without the intercept ``b0`` (with the trajectory terms when ``dyn``
    is given)."""
    z = math.log(AGE_OR_PER_5Y) * (pop.age - 75.0) / 5.0 + math.log(FEMALE_OR) * pop.female
    for key, rr in RISK_FACTOR_RR.items():
        z = z + math.log(rr) * pop.risk_factor(key)
    for key, rr in PRODROMAL_RR.items():
        w = timing_weight(np.nan_to_num(pop.onset[key], nan=99.0), key)
        z = z + math.log(rr) * w * pop.present[key]
    z = z + LATENT_WEIGHT * pop.u
    if dyn is not None:
        z = z + DYNAMICS_WEIGHT["cognitive"] * dyn.cognitive + DYNAMICS_WEIGHT["weight"] * dyn.weight
        z = z + DYNAMICS_WEIGHT["acceleration"] * dyn.acceleration
        z = z + ORDER_BONUS * memory_before_falls(pop)
    return z


def memory_before_falls(pop: Population) -> np.ndarray:
    """Whether memory complaints began before the first fall (onsets in years before the index date)."""
    both = pop.present["memory_complaints"] & pop.present["falls"]
    return both & (np.nan_to_num(pop.onset["memory_complaints"]) > np.nan_to_num(pop.onset["falls"]))


@lru_cache(maxsize=32)
def intercept_for(prevalence: float, signal: str = "presence") -> float:
    """The intercept ``b0`` that gives mean risk ``prevalence`` on a fixed reference sample."""
    if not 0.0 < prevalence < 1.0:
        raise ConfigError(f"prevalence must be in (0, 1), got {prevalence}")
    rng = np.random.default_rng(20240731)
    pop = sample_population(100_000, rng)
    z = risk_logit(pop, sample_dynamics(100_000, rng) if signal == "trajectory" else None)
    lo, hi = -20.0, 20.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if _sigmoid(mid + z).mean() < prevalence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def true_risk(pop: Population, prevalence: float = 0.15, dyn: Dynamics | None = None) -> np.ndarray:
    """The true probability of ADRD onset within 5 years after the index date."""
    signal = "presence" if dyn is None else "trajectory"
    return _sigmoid(intercept_for(prevalence, signal) + risk_logit(pop, dyn))
