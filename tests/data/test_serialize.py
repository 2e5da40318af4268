from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import EVENT_KINDS, Event, Patient
from icl_toolkit.data.serialize import condensed_profile, fold_history, serialize_history, token_counter

INDEX = dt.date(2019, 6, 1)
BIRTH = dt.date(1945, 2, 3)


@st.composite
def patients(draw):
    """Random records where every event after the index date carries a marker that must never surface."""
    n_before = draw(st.integers(0, 40))
    n_after = draw(st.integers(0, 15))
    events = []
    for _ in range(n_before):
        d = INDEX - dt.timedelta(days=draw(st.integers(0, 15 * 365)))
        kind = draw(st.sampled_from(EVENT_KINDS))
        code = draw(st.sampled_from(["I10", "E11.9", "G31.84", "4548-4", "8480-6", "29046", "99213", "72166-2"]))
        value = draw(st.one_of(st.none(), st.floats(0, 300, allow_nan=False).map(lambda v: round(v, 1)),
                               st.sampled_from(["Never smoker", "Former smoker"])))
        events.append(Event(d, kind, code, "SYS", f"item {code}", value, "mg/dL" if isinstance(value, float) else None))
    for i in range(n_after):
        d = INDEX + dt.timedelta(days=draw(st.integers(1, 6 * 365)))
        kind = draw(st.sampled_from(EVENT_KINDS))
        value = draw(st.one_of(st.none(), st.just(987.6), st.just("POSTVALUE")))
        events.append(Event(d, kind, f"ZZPOST{i}", "SYS", f"POSTINDEX marker {i}", value, "POSTUNIT"))
    draw(st.randoms()).shuffle(events)
    return Patient("H1", draw(st.sampled_from(["F", "M", "U"])), BIRTH, INDEX, events, label=None)


def _assert_no_leak(text: str) -> None:
    assert "ZZPOST" not in text and "POSTINDEX" not in text and "POSTVALUE" not in text
    assert "POSTUNIT" not in text and "987.6" not in text
    # every time shown is a time before the index date
    assert not re.search(r"\+\d+(\.\d+)?y", text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patients(), st.one_of(st.none(), st.integers(120, 400)))
def test_nothing_after_the_index_date_reaches_text_or_profile(lm_tokenizer, embedder_tokenizer, p, budget) -> None:
    try:
        s = serialize_history(p, max_tokens=budget, tokenizer=lm_tokenizer)
    except ConfigError as exc:  # a long header can need more than the smallest budgets drawn
        need = re.search(r"at least (\d+) tokens", str(exc))
        assert need and budget is not None and int(need.group(1)) > budget
        return
    _assert_no_leak(s.text)
    for line in s.dropped:
        _assert_no_leak(line)
    assert s.n_events == sum(1 for e in p.events if e.date <= INDEX)
    assert s.n_events_after_index == sum(1 for e in p.events if e.date > INDEX)
    prof = condensed_profile(p, tokenizer=embedder_tokenizer)
    _assert_no_leak(prof.text)
    assert (prof.n_events, prof.n_events_after_index) == (s.n_events, s.n_events_after_index)
    if budget is not None:
        assert s.n_tokens <= budget


def test_folding_counts_first_and_last(small_cohort) -> None:
    p = max(small_cohort, key=lambda q: len(q.events))
    items, visits = fold_history(p)
    assert sum(i.count for i in items) + len(visits) == len(p.history())
    hyper = [e for e in p.history() if e.kind == "diagnosis"]
    code = max({e.code for e in hyper}, key=lambda c: sum(e.code == c for e in hyper))
    (item,) = [i for i in items if i.kind == "diagnosis" and i.code == code]
    dates = [e.date for e in hyper if e.code == code]
    assert item.count == len(dates) and item.count > 1
    assert item.first == pytest.approx((p.index_date - min(dates)).days / 365.25)
    line = item.line()
    assert f"x{item.count}" in line and code in line
    text = serialize_history(p).text
    assert text.count(f" {code} ") == 1, "a repeated code is shown once"


def test_text_has_demographics_relative_times_and_units(small_cohort) -> None:
    p = next(q for q in small_cohort if any(e.kind == "lab" for e in q.events))
    text = serialize_history(p).text
    assert text.startswith(f"Age at index: {int(p.age_at_index)}. Sex: ")
    assert re.search(r"\(-\d+\.\dy", text)
    assert any(u in text for u in ("mg/dL", "%", "mmHg"))
    assert str(p.index_date.year) not in text.split("\n", 2)[2], "times are relative, not calendar dates"


@pytest.mark.parametrize("budget", [120, 200, 300, 600])
def test_budget_is_respected_and_cuts_are_reported(small_cohort, lm_tokenizer, budget) -> None:
    count = token_counter(lm_tokenizer)
    for p in small_cohort[:40]:
        full = serialize_history(p, tokenizer=lm_tokenizer)
        s = serialize_history(p, max_tokens=budget, tokenizer=lm_tokenizer)
        assert s.n_tokens == count([s.text])[0] <= budget
        if full.n_tokens <= budget:
            assert not s.truncated and s.text == full.text
        else:
            assert s.truncated and s.n_kept + len(s.dropped) == s.n_items
            assert f"[{len(s.dropped)} older or less informative items left out" in s.text


def test_truncation_keeps_recent_diagnoses_before_old_one_offs(small_cohort, lm_tokenizer) -> None:
    p = max(small_cohort, key=lambda q: len(q.events))
    items, _ = fold_history(p)
    s = serialize_history(p, max_tokens=200, tokenizer=lm_tokenizer)
    kept = [i for i in items if i.line()[2:] not in s.dropped]
    dropped = [i for i in items if i.line()[2:] in s.dropped]
    assert kept and dropped
    mean = lambda xs: sum(i.priority() for i in xs) / len(xs)  # noqa: E731
    assert mean(kept) > mean(dropped) + 0.5
    newest_dx = min((i for i in items if i.kind == "diagnosis"), key=lambda i: i.last)
    assert newest_dx in kept


def test_too_small_budget_is_a_clear_error(small_cohort, lm_tokenizer) -> None:
    with pytest.raises(ConfigError, match="must be at least"):
        serialize_history(small_cohort[0], max_tokens=5, tokenizer=lm_tokenizer)
    with pytest.raises(ConfigError, match="'max_tokens' parameter"):
        serialize_history(small_cohort[0], max_tokens=0, tokenizer=lm_tokenizer)


def test_profiles_fit_the_embedder_without_silent_truncation(small_cohort, embedder_tokenizer) -> None:
    for p in small_cohort:
        prof = condensed_profile(p, tokenizer=embedder_tokenizer)
        ids = embedder_tokenizer(prof.text)["input_ids"]
        assert len(ids) == prof.n_tokens <= 256
    # a crowded record is shortened by the drop rule, and says so
    big = max(small_cohort, key=lambda q: len({e.code for e in q.events}))
    tight = condensed_profile(big, tokenizer=embedder_tokenizer, max_tokens=40)
    assert tight.truncated and tight.n_tokens <= 40 and "more)" in tight.text
