"""Simulated deployment streams: what changes in the patients a served predictor is asked about.

Each function takes patients and returns new records (the inputs are not changed); labels stay what the data says,
so a stream's realized performance is still measurable once its outcomes are fed back.

- :func:`recode`: a coding change: a share of one vocabulary's codes replaced by codes of another (a site moving
  from ICD-10-CM to a local or older code set, for some code families). Names are kept, so the text a model and the
  retriever read is the same; only the codes change.
- :func:`shorten_at_site`: shorter histories at one site: a share of patients is assigned to site ``B`` whose
  records reach back only ``keep_days`` before the index date (a new clinic, a migrated record system).
- :func:`aged`: an older (or younger) population: only patients of an age range at the index date (the same
  model, a different case mix; the outcome rate rises with age).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import random
from collections.abc import Sequence

from icl_toolkit.data.cohort import Patient

__all__ = ["recode", "shorten_at_site", "aged"]


def _surrogate(code: str, target: str) -> str:
    return f"{target[:3]}-{hashlib.sha256(code.encode()).hexdigest()[:5]}"


def recode(
    patients: Sequence[Patient], share: float = 0.5, *, source: str = "ICD10CM", target: str = "ICD9CM", seed: int = 0
) -> list[Patient]:
    """Replace ``share`` of the ``source`` vocabulary's codes (chosen once, with ``seed``, among the codes these
    patients have) by surrogate codes of system ``target``, everywhere they occur."""
    codes = sorted({e.code for p in patients for e in p.events if e.system == source})
    rng = random.Random(seed)
    moved = set(rng.sample(codes, round(share * len(codes)))) if codes else set()

    def swap(p: Patient) -> Patient:
        events = [
            dataclasses.replace(e, system=target, code=_surrogate(e.code, target))
            if e.system == source and e.code in moved
            else e
            for e in p.events
        ]
        return dataclasses.replace(p, events=events)

    return [swap(p) for p in patients]


def shorten_at_site(
    patients: Sequence[Patient], site_share: float = 0.5, *, keep_days: int = 365, seed: int = 0
) -> list[Patient]:
    """Assign ``site_share`` of the patients (with ``seed``) to site ``B``, the rest to ``A`` (``groups["site"]``);
    site B's histories keep only the events of the last ``keep_days`` before the index date."""
    rng = random.Random(seed)
    out = []
    for p in patients:
        if rng.random() < site_share:
            cut = p.index_date - dt.timedelta(days=keep_days)
            events = [e for e in p.events if e.date >= cut]
            out.append(dataclasses.replace(p, events=events, groups=p.groups | {"site": "B"}))
        else:
            out.append(dataclasses.replace(p, groups=p.groups | {"site": "A"}))
    return out


def aged(patients: Sequence[Patient], min_age: float = 0, max_age: float = float("inf")) -> list[Patient]:
    """The patients at least ``min_age`` and under ``max_age`` years old at their index date."""
    return [p for p in patients if min_age <= p.age_at_index < max_age]
