"""A patient's history as prompt text, and a condensed profile for embedding.

History text (:func:`serialize_history`)::

    Age at index: 78. Sex: female.
    Record: 9.8 years before the index date; 34 visits (office 29, emergency 3, wellness 2), 4 in the last 12 months.
    Times are years before the index date (-0.5y = six months before).
    More than 5 years before:
    - Dx I10 Essential (primary) hypertension (x12, -9.6y to -0.4y)
    - Rx lisinopril 10 mg tablet (x8, -9.5y to -0.4y)
    1 to 5 years before:
    - Dx G31.84 Mild cognitive impairment of uncertain or known etiology (x3, -1.2y to -0.1y)
    Last 12 months:
    - Proc 70551 MRI brain without contrast (-0.2y)
    Measurements (latest; range; count):
    - HbA1c 7.4 % high (-0.3y; 6.8-7.6; n=9)

Only events dated on or before the index date are read (:meth:`Patient.history`).
Repeated codes are folded into one item with a count and the first and last time;
items sit in the period of their first appearance; measurements show the latest
value, flagged when outside the reference range, with the range and count.

Truncation policy, when the text must fit ``max_tokens`` (counted with the
model's tokenizer): the demographic and record lines are always kept; every
other item gets a keep-priority

    kind weight (diagnosis 3, assessment/observation 2.5, lab and vital 2,
    medication 1.5, procedure 1)
    + recency 2 * exp(-years since last seen / 3)
    + repetition 0.3 * ln(1 + count)
    + 1 when the latest measurement is out of range

and items are dropped lowest priority first (so old, one-off, low-information
items go first, recent diagnoses last) until the text fits. A closing line says
how many items were left out, and :class:`Serialized` lists them.

Condensed profile (:func:`condensed_profile`): demographics, conditions (names,
recent ones marked), drugs and abnormal results, in the same priority order,
fitted to the embedder's 256-token input (special tokens included) by the same
drop rule, never by silent truncation.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Event, Patient
from icl_toolkit.data.vocabulary import MEASURE_BY_CODE

__all__ = [
    "HISTORY_VERSION",
    "PROFILE_VERSION",
    "Item",
    "Serialized",
    "fold_history",
    "serialize_history",
    "condensed_profile",
    "token_counter",
    "mentioned_in",
    "sex_word",
]

HISTORY_VERSION = "history-v1"
PROFILE_VERSION = "profile-v1"

_YEAR = 365.25
_PREFIX = {"diagnosis": "Dx", "medication": "Rx", "procedure": "Proc", "observation": "Obs"}
_KIND_WEIGHT = {"diagnosis": 3.0, "observation": 2.5, "lab": 2.0, "vital": 2.0, "medication": 1.5, "procedure": 1.0}
_KIND_ORDER = {"diagnosis": 0, "medication": 1, "procedure": 2, "observation": 3, "lab": 4, "vital": 5}
_PERIODS = ((5.0, "More than 5 years before:"), (1.0, "1 to 5 years before:"), (-1.0, "Last 12 months:"))
_SEX = {"F": "female", "M": "male", "U": "unknown"}

TokenCounter = Callable[[Sequence[str]], list[int]]


def sex_word(sex: str) -> str:
    """``F`` -> ``female``, ``M`` -> ``male``, anything else -> ``unknown``."""
    return _SEX.get(sex, "unknown")


def token_counter(tokenizer: Any, special_tokens: bool = False) -> TokenCounter:
    """A function that counts tokens of several texts with a Hugging Face tokenizer."""

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = tokenizer(list(texts), add_special_tokens=special_tokens)["input_ids"]
        return [len(ids) for ids in enc]

    return count


@dataclass
class Item:
    """Events with the same kind and code (and text value), folded into one line."""

    kind: str
    code: str
    name: str
    count: int
    first: float  # years before the index date
    last: float
    values: list[float] = field(default_factory=list)  # numeric values, oldest first
    unit: str | None = None
    text_value: str | None = None

    @property
    def is_measure(self) -> bool:
        return bool(self.values)

    @property
    def display_name(self) -> str:
        spec = MEASURE_BY_CODE.get(self.code)
        return spec.short if spec else self.name

    @property
    def flag(self) -> str:
        spec = MEASURE_BY_CODE.get(self.code)
        if not spec or not self.values:
            return ""
        v = self.values[-1]
        if spec.high is not None and v > spec.high:
            return "high"
        if spec.low is not None and v < spec.low:
            return "low"
        return ""

    def priority(self) -> float:
        p = _KIND_WEIGHT.get(self.kind, 1.0) + 2.0 * math.exp(-self.last / 3.0) + 0.3 * math.log1p(self.count)
        return p + (1.0 if self.flag else 0.0)

    def line(self) -> str:
        if self.is_measure:
            unit = self.unit if self.unit and not self.unit.startswith("{") else None  # UCUM "{score}" etc.
            head = " ".join(x for x in (self.display_name, _num(self.values[-1]), unit, self.flag) if x)
            if self.count > 1:
                return f"- {head} ({_t(self.last)}; {_num(min(self.values))}-{_num(max(self.values))}; n={self.count})"
            return f"- {head} ({_t(self.last)})"
        label = f"{self.name}: {self.text_value}" if self.text_value else self.name
        code = f" {self.code}" if self.kind != "observation" and self.kind != "medication" else ""
        when = f"(x{self.count}, {_t(self.first)} to {_t(self.last)})" if self.count > 1 else f"({_t(self.first)})"
        return f"- {_PREFIX.get(self.kind, self.kind)}{code} {label} {when}"


def _num(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e6 else f"{v:.3g}"


def _t(years: float) -> str:
    return f"-{years:.1f}y"


def _years(index: dt.date, d: dt.date) -> float:
    return max(0.0, (index - d).days / _YEAR)


def fold_history(patient: Patient) -> tuple[list[Item], list[Event]]:
    """Fold the history (events on or before the index date) into items; visits are returned apart."""
    items: dict[tuple[str, str, str], Item] = {}
    visits: list[Event] = []
    for e in patient.history():
        if e.kind == "visit":
            visits.append(e)
            continue
        numeric = isinstance(e.value, (int, float)) and not isinstance(e.value, bool)
        text_value = e.value if isinstance(e.value, str) else None
        key = (e.kind, e.code, text_value or "")
        t = _years(patient.index_date, e.date)
        it = items.get(key)
        if it is None:
            it = items[key] = Item(e.kind, e.code, e.name, 0, t, t, unit=e.unit, text_value=text_value)
        it.count += 1
        it.last = t
        if numeric and isinstance(e.value, int | float):
            it.values.append(float(e.value))
    return list(items.values()), visits


@dataclass
class Serialized:
    """Text for a model, with what went into it and what was cut to fit."""

    text: str
    n_tokens: int | None
    budget: int | None
    n_items: int
    n_kept: int
    dropped: list[str] = field(default_factory=list)
    n_events: int = 0
    n_events_after_index: int = 0

    @property
    def truncated(self) -> bool:
        return bool(self.dropped)


def _header(patient: Patient, items: list[Item], visits: list[Event]) -> list[str]:
    age = int(patient.age_at_index)
    lines = [f"Age at index: {age}. Sex: {_SEX.get(patient.sex, patient.sex)}."]
    if not items and not visits:
        lines.append("Record: no events before the index date.")
        return lines
    span = max([i.first for i in items] + [_years(patient.index_date, v.date) for v in visits])
    kinds: dict[str, int] = {}
    for v in visits:
        word = v.name.split(",")[0].lower().replace(" visit", "").replace("office or other outpatient", "office")
        word = {
            "emergency department": "emergency",
            "initial hospital inpatient care": "inpatient",
            "annual wellness": "wellness",
        }.get(word, word)
        kinds[word] = kinds.get(word, 0) + 1
    recent = sum(1 for v in visits if _years(patient.index_date, v.date) <= 1.0)
    detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    lines.append(
        f"Record: {span:.1f} years before the index date; {len(visits)} visits"
        + (f" ({detail})" if detail else "")
        + f", {recent} in the last 12 months."
    )
    lines.append("Times are years before the index date (-0.5y = six months before).")
    return lines


def _render(header: list[str], items: list[Item], n_dropped: int) -> str:
    lines = list(header)
    events = [i for i in items if not i.is_measure]
    measures = [i for i in items if i.is_measure]
    for bound, title in _PERIODS:
        group = [i for i in events if i.first > bound and (bound == 5.0 or i.first <= _upper(bound))]
        if group:
            lines.append(title)
            group.sort(key=lambda i: (_KIND_ORDER.get(i.kind, 9), -i.first, i.code))
            lines.extend(i.line() for i in group)
    if measures:
        lines.append("Measurements (latest; range; count):")
        measures.sort(key=lambda i: (_KIND_ORDER.get(i.kind, 9), i.display_name))
        lines.extend(i.line() for i in measures)
    if n_dropped:
        lines.append(f"[{n_dropped} older or less informative items left out to fit the length limit]")
    return "\n".join(lines)


def _upper(bound: float) -> float:
    return {1.0: 5.0, -1.0: 1.0}[bound]


def _fit(
    items: list[Item],
    render: Callable[[list[Item], int], str],
    line_of: Callable[[Item], str],
    budget: int,
    count: TokenCounter,
    what: str,
    priority: Callable[[Item], float] = Item.priority,
) -> tuple[str, int, list[Item]]:
    """Keep the highest-priority items that fit ``budget`` tokens; return text, tokens, dropped."""
    text = render(items, 0)
    n = count([text])[0]
    if n <= budget:
        return text, n, []
    # the fixed lines with the longest "[N items left out]" note: what is left when every item goes
    floor = count([render([], len(items))])[0]
    if floor > budget:
        raise ConfigError(
            f"The token budget for the {what} must be at least {floor} tokens (the fixed lines "
            f"alone need that many). Got {budget} instead."
        )
    base = count([render([], 1)])[0]
    ranked = sorted(items, key=lambda i: -priority(i))
    costs = count([line_of(i) for i in ranked])
    kept: list[Item] = []
    used = base
    for it, c in zip(ranked, costs):
        if used + c + 1 <= budget:
            kept.append(it)
            used += c + 1
    while True:
        dropped = [i for i in ranked if i not in kept]
        text = render(kept, len(dropped))
        n = count([text])[0]
        if n <= budget or not kept:
            return text, n, dropped
        kept.pop()  # lowest priority of those kept


def mentioned_in(text: str) -> Callable[[Item], bool]:
    """A predicate: is this item named in ``text`` (by code, measurement name or drug name)?"""
    low = text.lower()
    words = set(re.findall(r"[a-z0-9][a-z0-9.]*[a-z0-9]", low))

    def named(it: Item) -> bool:
        if it.code.lower() in words:
            return True
        if it.is_measure:
            return it.display_name.lower() in low
        if it.kind == "medication":
            first = it.name.split()[0].lower() if it.name else ""
            return len(first) > 3 and first in words
        return False

    return named


def serialize_history(
    patient: Patient,
    *,
    max_tokens: int | None = None,
    tokenizer: Any = None,
    counter: TokenCounter | None = None,
    prefer: Callable[[Item], bool] | None = None,
) -> Serialized:
    """A patient's history before the index date as prompt text.

    Args:
        patient: the patient.
        max_tokens: token budget for the text, or None for no limit.
        tokenizer: tokenizer to count with (default: the embedded language model's).
        counter: a token counting function instead of a tokenizer.
        prefer: items for which this returns True are kept before all others when
            the text must be cut (used for demonstrations: the items their
            rationale cites, see :func:`mentioned_in`).

    Returns:
        The text with its token count and the items dropped to fit, if any.

    Raises:
        ConfigError: when ``max_tokens`` cannot hold even the fixed lines.
    """
    items, visits = fold_history(patient)
    n_hist = sum(i.count for i in items) + len(visits)
    after = len(patient.events) - n_hist
    header = _header(patient, items, visits)
    if max_tokens is None and tokenizer is None and counter is None:
        text = _render(header, items, 0)
        return Serialized(text, None, None, len(items), len(items), [], n_hist, after)
    count = counter or token_counter(tokenizer if tokenizer is not None else _default_tokenizer())
    if max_tokens is None:
        text = _render(header, items, 0)
        return Serialized(text, count([text])[0], None, len(items), len(items), [], n_hist, after)
    if max_tokens < 1:
        raise ConfigError(f"The 'max_tokens' parameter must be an int >= 1 or None. Got {max_tokens!r} instead.")
    rank = Item.priority if prefer is None else (lambda i: i.priority() + (100.0 if prefer(i) else 0.0))
    text, n, dropped = _fit(
        items, lambda keep, nd: _render(header, keep, nd), Item.line, max_tokens, count, "history", rank
    )
    return Serialized(
        text, n, max_tokens, len(items), len(items) - len(dropped), [d.line()[2:] for d in dropped], n_hist, after
    )


def _default_tokenizer() -> Any:
    from icl_toolkit.core.models import load_tokenizer

    return load_tokenizer("default")


# ------------------------------------------------------------------- condensed profile


def _profile_phrase(it: Item) -> str:
    if it.is_measure:
        return f"{it.display_name} {_num(it.values[-1])} {it.flag}"
    name = it.name.lower() if it.kind != "medication" else it.name.split(" ")[0].lower()
    if it.text_value:
        name = f"{it.name.lower()}: {it.text_value.lower()}"
    return name + (" (recent)" if it.first <= 2.0 and it.kind == "diagnosis" else "")


def _render_profile(patient: Patient, items: list[Item], n_dropped: int) -> str:
    parts = [f"{_SEX.get(patient.sex, patient.sex).capitalize()}, age {int(patient.age_at_index)}."]
    sections = (
        ("Conditions", lambda i: i.kind == "diagnosis"),
        ("Medications", lambda i: i.kind == "medication"),
        ("Abnormal results", lambda i: i.is_measure),
        ("Other", lambda i: i.kind in ("procedure", "observation") and not i.is_measure),
    )
    for title, pick in sections:
        chosen = [i for i in items if pick(i)]
        if chosen:
            parts.append(f"{title}: " + "; ".join(_profile_phrase(i) for i in chosen) + ".")
    if n_dropped:
        parts.append(f"(+{n_dropped} more)")
    return " ".join(parts)


def condensed_profile(
    patient: Patient, *, max_tokens: int = 256, tokenizer: Any = None, counter: TokenCounter | None = None
) -> Serialized:
    """A short, embedding-friendly summary of the history that fits the embedder's input.

    Items come in keep-priority order; measurements only when out of range.
    The count includes the tokenizer's special tokens, so the embedder sees the
    whole text. ``dropped`` lists what did not fit.
    """
    items, visits = fold_history(patient)
    n_hist = sum(i.count for i in items) + len(visits)
    items = [i for i in items if not i.is_measure or i.flag]
    items.sort(key=lambda i: -i.priority())
    if counter is None:
        if tokenizer is None:
            from icl_toolkit.core.models import load_embedder_tokenizer

            tokenizer = load_embedder_tokenizer("default")
        counter = token_counter(tokenizer, special_tokens=True)
    ordered = {id(i): k for k, i in enumerate(items)}

    def render(keep: list[Item], nd: int) -> str:
        return _render_profile(patient, sorted(keep, key=lambda i: ordered[id(i)]), nd)

    text, n, dropped = _fit(items, render, _profile_phrase, max_tokens, counter, "profile")
    return Serialized(
        text,
        n,
        max_tokens,
        len(items),
        len(items) - len(dropped),
        [_profile_phrase(d) for d in dropped],
        n_hist,
        len(patient.events) - n_hist,
    )
