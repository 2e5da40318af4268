"""Reasoning that loops, and the choice of a stop rule on validation patients.

A fine-tuned checkpoint that reasons in steps can fail to end: it writes its last step heading again and again
until the token limit (the step-by-step checkpoint of the powered recipe did so for most test patients). A
reasoning *loops* when a step heading (the words before the first colon of a line, after any ``Step N:``
numbering) occurs twice or more. :func:`choose_stop_rule` picks among candidate stop rules (stop strings, a
no-repeat n-gram size, a repetition penalty) from their validation predictions only.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["looping", "count_looping", "choose_stop_rule", "MAX_LOOPING_SHARE"]

_STEP = re.compile(r"^step\s*\d+\s*[:.)-]\s*", re.IGNORECASE)

MAX_LOOPING_SHARE = 0.05
"""A stop rule is acceptable when at most this share of the validation reasonings loop."""


def _headings(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = _STEP.sub("", line.strip())
        if line:
            out.append(line.split(":")[0].strip().lower())
    return out


def looping(text: str | None) -> bool:
    """Whether a reasoning repeats a step heading (see the module docstring)."""
    counts = Counter(_headings(text or ""))
    return bool(counts) and max(counts.values()) >= 2


def count_looping(records: Sequence[Mapping[str, Any]]) -> int:
    """How many prediction records' reasonings loop."""
    return sum(looping(r.get("reasoning")) for r in records)


def choose_stop_rule(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The stop rule to use, from validation rows (``name``, ``n``, ``looping``, ``val_auroc``): the highest
    validation AUROC among the rules whose reasonings loop for at most :data:`MAX_LOOPING_SHARE` of the patients;
    when none does, the one with the fewest looping reasonings (then the higher AUROC). Only validation numbers
    enter, so no test label can change the choice."""
    if not rows:
        raise ValueError("no stop rules to choose from")
    ok = [r for r in rows if r["looping"] <= MAX_LOOPING_SHARE * r["n"]]
    if ok:
        return max(ok, key=lambda r: (r["val_auroc"], -r["looping"]))
    return min(rows, key=lambda r: (r["looping"], -r["val_auroc"]))
