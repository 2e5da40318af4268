"""Templates, chat formatting, demo order and context packing."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Event
from icl_toolkit.prompting.builder import PromptBuilder
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.prompting.templates import prompts_dir
from icl_toolkit.retrieval.retriever import Hit


@pytest.fixture(scope="module")
def setup(small_cohort):
    pool = {p.patient_id: p for p in small_cohort[:50]}
    hits = [Hit(pid, 0.9 - 0.1 * i, p.label, i) for i, (pid, p) in enumerate(list(pool.items())[:4])]
    return small_cohort[60], hits, pool


def test_every_template_renders_with_the_chat_template(lm_tokenizer, setup):
    query, hits, pool = setup
    for demos in ("rationale", "label", "none"):
        for mode in ("score", "reason"):
            b = PromptBuilder(lm_tokenizer, PromptConfig(demos=demos, mode=mode), max_context=8192)
            bp = b.build(query, hits, pool)
            assert bp.text.startswith("<|im_start|>system\n")
            ending = "<|im_start|>assistant\n" + ("" if mode == "reason" else "ADRD within 5 years:")
            assert bp.text.endswith(ending)
            assert "Age at index" in bp.text and "Alzheimer" in bp.text
            assert bp.n_tokens == len(lm_tokenizer(bp.text).input_ids)
            n_examples = bp.text.count("Example ")
            assert n_examples == (0 if demos == "none" else 4)
            has_reasoning = "Reasoning:" in bp.text
            assert has_reasoning == (demos == "rationale")
            if demos == "rationale":
                first = pool[bp.demos[0].patient_id].rationales.free_text.strip()
                assert first in bp.text
            assert bp.choices == [" Yes", " No"]
            if mode == "reason":
                assert '"ADRD within 5 years: Yes"' in bp.text
            assert bp.template == ("reason_first" if mode == "reason" else
                                   {"rationale": "few_shot_rationale", "label": "few_shot_label",
                                    "none": "zero_shot"}[demos])


def test_demo_order_defaults_to_most_similar_last(lm_tokenizer, setup):
    query, hits, pool = setup
    last = PromptBuilder(lm_tokenizer, PromptConfig(), 8192).build(query, hits, pool)
    assert [h.score for h in last.demos] == sorted(h.score for h in hits)
    first = PromptBuilder(lm_tokenizer, PromptConfig(order="similar-first"), 8192).build(query, hits, pool)
    assert [h.score for h in first.demos] == sorted((h.score for h in hits), reverse=True)
    # the text follows that order: the most similar demo's outcome line comes last before the query
    outcome = {1: "Yes", 0: "No"}[max(hits, key=lambda h: h.score).label]
    tail = last.text.rsplit("Example 4 record:", 1)[1]
    assert f"ADRD within 5 years: {outcome}" in tail


def test_packing_drops_least_similar_demos_under_a_tiny_context(lm_tokenizer, setup):
    query, hits, pool = setup
    full = PromptBuilder(lm_tokenizer, PromptConfig(), 8192).build(query, hits, pool)
    limit = full.n_tokens - 300
    b = PromptBuilder(lm_tokenizer, PromptConfig(max_context=limit), 8192)
    bp = b.build(query, hits, pool)
    assert bp.n_tokens <= limit - 8
    assert bp.dropped and len(bp.dropped) + len(bp.demos) == 4
    assert max(h.score for h in bp.dropped) <= min(h.score for h in bp.demos)
    assert bp.text.count("Example ") == len(bp.demos)


def test_query_that_cannot_fit_is_an_error(lm_tokenizer, setup):
    query, hits, pool = setup
    b = PromptBuilder(lm_tokenizer, PromptConfig(max_context=256, query_tokens=400), 8192)
    with pytest.raises(ConfigError, match="--query-tokens"):
        b.build(query, hits, pool)


def test_history_budgets_are_applied_and_cuts_recorded(lm_tokenizer, setup):
    query, hits, pool = setup
    b = PromptBuilder(lm_tokenizer, PromptConfig(demo_tokens=120, query_tokens=150), 8192)
    bp = b.build(query, hits, pool)
    assert bp.truncated_items  # with these budgets something is cut
    for pid, n in bp.truncated_items.items():
        budget = 150 if pid == query.patient_id else 120
        demo = pid != query.patient_id
        assert b.history(pool[pid] if demo else query, budget, demo=demo).n_tokens <= budget
        assert n > 0


def test_nothing_after_the_index_date_reaches_the_prompt(lm_tokenizer, setup):
    query, hits, pool = setup
    future = Event(date=query.index_date + dt.timedelta(days=30), kind="diagnosis", code="G30.9",
                   system="ICD10CM", name="Alzheimer's disease, unspecified FUTURE-MARKER")
    leaky = dataclasses.replace(query, events=list(query.events) + [future])
    bp = PromptBuilder(lm_tokenizer, PromptConfig(demos="none"), 8192).build(leaky, [], pool)
    assert "FUTURE-MARKER" not in bp.text


def test_templates_are_sandboxed(lm_tokenizer, setup, tmp_path):
    from jinja2.exceptions import SecurityError

    query, hits, pool = setup
    evil = tmp_path / "evil.j2"
    evil.write_text("{{ query.__class__.__mro__[1].__subclasses__() }}")
    b = PromptBuilder(lm_tokenizer, PromptConfig(template=str(evil)), 8192)
    with pytest.raises(SecurityError):
        b.build(query, hits, pool)
    typo = tmp_path / "typo.j2"
    typo.write_text("{{ quer.history }}")
    with pytest.raises(Exception, match="quer"):
        PromptBuilder(lm_tokenizer, PromptConfig(template=str(typo)), 8192).build(query, hits, pool)


def test_unknown_template_names_the_available_ones(lm_tokenizer):
    with pytest.raises(ConfigError, match="few_shot_label"):
        PromptBuilder(lm_tokenizer, PromptConfig(template="nonexistent"), 8192)
    assert (prompts_dir() / "README.md").is_file()


def test_without_a_chat_template_the_prompt_ends_in_answer(lm_tokenizer, setup):
    import copy

    query, hits, pool = setup
    plain = copy.copy(lm_tokenizer)
    plain.chat_template = None
    bp = PromptBuilder(plain, PromptConfig(), 8192).build(query, hits, pool)
    assert bp.text.endswith("\nADRD within 5 years:") and bp.choices == [" Yes", " No"]
    assert "<|im_start|>" not in bp.text


def test_demo_histories_keep_what_their_rationale_cites(lm_tokenizer, small_cohort):
    from icl_toolkit.data.serialize import fold_history, mentioned_in, serialize_history

    counter = PromptBuilder(lm_tokenizer, PromptConfig(), 8192)._count
    kept_cited, kept_plain, n = 0, 0, 0
    for p in small_cohort[:40]:
        cited = mentioned_in(p.rationales.free_text)
        items, _ = fold_history(p)
        names = [it.line()[2:] for it in items if cited(it)]
        if not names:
            continue
        n += len(names)
        plain = serialize_history(p, max_tokens=150, counter=counter)
        pref = serialize_history(p, max_tokens=150, counter=counter, prefer=cited)
        assert pref.n_tokens <= 150
        kept_cited += sum(x not in pref.dropped for x in names)
        kept_plain += sum(x not in plain.dropped for x in names)
    assert n > 40 and kept_cited > kept_plain


def test_icl_prompts_overrides_the_shipped_templates_file_by_file(tmp_path, monkeypatch):
    from icl_toolkit.prompting.templates import load_templates, prompts_dir

    (tmp_path / "system.j2").write_text("A different system message.")
    shipped, shipped_hash = load_templates("system", "answer")
    monkeypatch.setenv("ICL_PROMPTS", str(tmp_path))
    (system, answer), digest = load_templates("system", "answer")
    assert system.render() == "A different system message." and digest != shipped_hash
    words = {"task": {"answer": "ADRD within 5 years"}, "horizon_years": "5"}
    assert answer.render(**words) == shipped[1].render(**words) == "ADRD within 5 years:"   # the rest still shipped
    assert (prompts_dir() / "answer.j2").is_file()
