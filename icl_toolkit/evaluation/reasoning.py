"""Reasoning that loops, and the choice of a stop rule on validation patients.

A fine-tuned checkpoint that reasons in steps can fail to end: it writes its last step heading again and again
until the token limit (the step-by-step checkpoint of the powered recipe did so for most test patients). A
reasoning *loops* when a step heading (the words before the first colon of a line, after any ``Step N:``
numbering) occurs twice or more; it is *unfinished* when it loops or runs to the token limit (a rule that only
forbids exact repeats can leave the model paraphrasing its headings up to the limit: "Mood and senses", "Mood,
senses", "Mood, sensations"). :func:`choose_stop_rule` picks among candidate stop rules (stop strings, a
no-repeat n-gram size, a repetition penalty) from their validation predictions only, by unfinished reasonings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["looping", "count_looping", "count_unfinished", "choose_stop_rule", "MAX_LOOPING_SHARE"]

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


def count_unfinished(records: Sequence[Mapping[str, Any]], tokenizer: Any, reason_tokens: int) -> int:
    """How many reasonings loop or run to the token limit (within 4 tokens of ``reason_tokens``, as decoded text
    re-encodes)."""
    return sum(
        looping(r.get("reasoning"))
        or len(tokenizer(r.get("reasoning") or "", add_special_tokens=False)["input_ids"]) >= reason_tokens - 4
        for r in records
    )


def choose_stop_rule(rows: Sequence[Mapping[str, Any]], by: str = "unfinished") -> Mapping[str, Any]:
    """The stop rule to use, from validation rows (``name``, ``n``, ``val_auroc`` and the count ``by``, default
    ``unfinished``): the highest validation AUROC among the rules that leave at most :data:`MAX_LOOPING_SHARE` of
    the reasonings unfinished; when none does, the one with the fewest (then the higher AUROC). Only validation
    numbers enter, so no test label can change the choice."""
    if not rows:
        raise ValueError("no stop rules to choose from")
    ok = [r for r in rows if r[by] <= MAX_LOOPING_SHARE * r["n"]]
    if ok:
        return max(ok, key=lambda r: (r["val_auroc"], -r[by]))
    return min(rows, key=lambda r: (r[by], -r["val_auroc"]))
