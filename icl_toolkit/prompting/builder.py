"""Prompt building: templates from ``prompts/`` (package data), demonstrations, chat template, context packing.

Templates are Jinja files rendered in a sandboxed, immutable environment with
strict undefined variables (a typo in a template is an error, not an empty
string). Their variables are documented in ``prompts/README.md``.

The user message is rendered from the task template (zero-shot, few-shot with
rationales, few-shot label-only, or reason-first) and the system message from
``system.j2``; when the model's tokenizer has a chat template, both go through
it with the generation prompt added. The assistant's turn then starts with the
answer prefix from ``answer.j2`` (``"ADRD within 5 years:"``), the same words
that end every demonstration, and the answer slot right after it is scored for
the choices ``" Yes"`` / ``" No"``. Mirroring the demos' outcome line matters:
with the answer slot at the bare start of the assistant's turn, SmolLM2-135M
gave P(yes) 0.27 after four "Yes" demos and 0.34 after four "No" demos (it
did not follow them); with the prefix, 0.68 and 0.05. Without a chat template
the prompt is system + user text + newline + answer prefix. In reason mode the
prompt stops at the start of the assistant's turn; the model writes its
reasoning, which is cut at the answer prefix, and the prefix is then appended
and scored.

Context packing, in this order, so that the prompt fits the model's context:

1. every demonstration's history is cut to ``demo_tokens`` and the query's to
   ``query_tokens`` (by the serializer's documented drop policy);
2. while the whole prompt (plus the room the answer needs) is too long, the
   least similar demonstration is dropped;
3. if the query alone still does not fit, that is an error naming the budgets.

Everything cut is recorded on the :class:`BuiltPrompt`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_toolkit.core.artifacts import text_hash
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient
from icl_toolkit.data.serialize import Serialized, mentioned_in, serialize_history, sex_word, token_counter
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.prompting.templates import (
    ANSWER_TEMPLATE,
    REASON_TEMPLATE,
    SYSTEM_TEMPLATE,
    TEMPLATES,
    TaskWords,
    chat_prompt,
    load_templates,
)
from icl_toolkit.retrieval.retriever import Hit
from icl_toolkit.retrieval.risk import risk_text

__all__ = ["BuiltPrompt", "PromptBuilder", "templates_hash", "task_question", "task_words", "RISK_LINE"]

RISK_LINE = "Risk from a model of similar patients"
"""The words before the risk percentage on a record's first line when ``show_risk`` is on."""


def task_question(config: PromptConfig) -> str:
    """The question ``config``'s prompts ask (its task's, with the horizon filled in)."""
    return task_words(config).question


def task_words(config: PromptConfig) -> TaskWords:
    """The task's words as ``config``'s templates receive them (``task``)."""
    return TaskWords(config.task, f"{config.horizon_years:g}")


@dataclass
class BuiltPrompt:
    """A rendered prompt and what packing did to fit it."""

    text: str
    n_tokens: int
    choices: list[str]
    demos: list[Hit]  # in presentation order
    dropped: list[Hit] = field(default_factory=list)
    truncated_items: dict[str, int] = field(default_factory=dict)  # patient_id -> history items left out
    template: str = ""

    @property
    def hash(self) -> str:
        return text_hash(self.text)


def _templates(config: PromptConfig) -> tuple[list[Any], str, str]:
    """The system, user and answer templates ``config`` asks for, the hash of their sources, the user
    template's name."""
    name = config.template or (REASON_TEMPLATE if config.mode == "reason" else TEMPLATES[config.demos])
    extra = None
    if Path(name).is_file():
        if Path(name).suffix != ".j2":
            raise ConfigError(
                f"--template {name}: a template file is a Jinja file ending in .j2; give one, or "
                "the name of a template in prompts (without .j2)."
            )
        extra = Path(name).resolve().parent
        name = Path(name).stem
    templates, digest = load_templates(SYSTEM_TEMPLATE, name, ANSWER_TEMPLATE, extra_dir=extra)
    return templates, digest, name


def templates_hash(config: PromptConfig) -> str:
    """The hash of the template sources a :class:`PromptBuilder` with ``config`` renders from (what prediction
    files record as ``templates_hash``), without a tokenizer."""
    return _templates(config)[1]


class PromptBuilder:
    """Renders prompts for query patients with their chosen demonstrations.

    Args:
        tokenizer: the language model's tokenizer (token counts and chat template).
        config: layout and packing settings.
        max_context: the backend's context limit (``config.max_context`` wins when lower).
    """

    def __init__(self, tokenizer: Any, config: PromptConfig | None = None, max_context: int = 2048) -> None:
        self.config = config or PromptConfig()
        self.tokenizer = tokenizer
        limit = self.config.max_context or max_context
        self.max_context = min(limit, max_context)
        self._count = token_counter(tokenizer)
        (self._system, self._user, self._answer), self.templates_hash, self.template_name = _templates(self.config)
        self._histories: dict[tuple[str, int, bool], Serialized] = {}
        self._template_stop: tuple[str, ...] = ()  # the user template's ``stop``, known once it has rendered
        self._task = task_words(self.config)

    # ------------------------------------------------------------------ pieces

    choices: tuple[str, ...] = (" Yes", " No")
    """The answer choices, yes first, as they follow the answer prefix."""

    @property
    def answer_prefix(self) -> str:
        """The words that open the answer (and end every demo): the task's ``answer`` and a colon (``"ADRD within 5
        years:"``)."""
        return self._answer.render(task=self._task, horizon_years=self._task.horizon).strip()

    def history(self, patient: Patient, budget: int, *, demo: bool = False) -> Serialized:
        """Serialised history under ``budget`` tokens (cached per patient, budget and role).

        A demonstration's history keeps the items its free-text rationale cites
        before all others, so the reasoning shown refers to what is shown; this
        holds for label-only demos too, so the two demo settings see the same
        histories and differ only in the rationale.
        """
        key = (patient.patient_id, budget, demo)
        if key not in self._histories:
            if len(self._histories) > 50_000:
                self._histories.clear()
            prefer = None
            if demo and patient.rationales is not None and patient.rationales.free_text:
                prefer = mentioned_in(patient.rationales.free_text)
            self._histories[key] = serialize_history(patient, max_tokens=budget, counter=self._count, prefer=prefer)
        return self._histories[key]

    def _record(self, patient: Patient, budget: int, risks: Mapping[str, float] | None, *, demo: bool) -> str:
        """A record as the prompt shows it: the serialised history, opened by the pool model's risk line when
        ``show_risk`` is on (so every template shows it, the built-in ones unchanged)."""
        text = self.history(patient, budget, demo=demo).text
        if self.config.show_risk:
            text = f"{RISK_LINE}: {risk_text(self._risk(patient, risks))}\n{text}"
        return text

    @staticmethod
    def _risk(patient: Patient, risks: Mapping[str, float] | None) -> float:
        if risks is None or patient.patient_id not in risks:
            raise ConfigError(
                f"show_risk is on but no pool-model risk was given for patient {patient.patient_id}; "
                "the predictor computes them (PoolRisk) when it is fitted with show_risk."
            )
        return risks[patient.patient_id]

    def _demo_vars(self, hit: Hit, patient: Patient, risks: Mapping[str, float] | None) -> dict[str, Any]:
        rationale = ""
        if self.config.demos == "rationale" and patient.rationales is not None:
            rationale = getattr(patient.rationales, self.config.rationale).strip()
        return {
            "history": self._record(patient, self.config.demo_tokens, risks, demo=True),
            "rationale": rationale,
            "outcome": "Yes" if hit.label == 1 else "No",
            "label": hit.label,
            "score": hit.score,
            "risk": risks.get(patient.patient_id) if risks else None,
        }

    def _order(self, hits: list[Hit], query_id: str, permutation: int = 0) -> list[Hit]:
        """The presentation order: the configured one, or (``permutation`` m > 0, the order ensemble's m-th
        member) a permutation of it seeded by the seed, the query and m."""
        by_sim = sorted(hits, key=lambda h: (-h.score, h.patient_id))
        if self.config.order == "similar-first":
            ordered = by_sim
        elif self.config.order == "similar-last":
            ordered = by_sim[::-1]
        else:
            ordered = list(by_sim)
            random.Random(f"{self.config.seed}:{query_id}").shuffle(ordered)
        if permutation:
            random.Random(f"{self.config.seed}:{query_id}:order{permutation}").shuffle(ordered)
        return ordered

    def render(
        self, query: Patient, demos: Sequence[tuple[Hit, Patient]], risks: Mapping[str, float] | None = None
    ) -> str:
        """The full prompt text for ``query`` with the demos in the given order (no packing); ``risks``: the pool
        model's risk by patient id (needed with ``show_risk``)."""
        c = self.config
        variables = {
            "task": self._task,
            "horizon_years": self._task.horizon,
            "choices": ["Yes", "No"],
            "query": {
                "history": self._record(query, c.query_tokens, risks, demo=False),
                "age": int(query.age_at_index),
                "sex": sex_word(query.sex),
                "risk": risks.get(query.patient_id) if risks else None,
            },
            "demos": [self._demo_vars(h, p, risks) for h, p in demos],
            "with_rationales": c.demos == "rationale",
            "answer_prefix": self.answer_prefix,
        }
        system = self._system.render(**variables).strip()
        module = self._user.make_module(variables)
        user = str(module).strip()
        self._template_stop = tuple(getattr(module, "stop", ()) or ())
        answer = "" if c.mode == "reason" else self.answer_prefix
        return chat_prompt(self.tokenizer, system, user) + answer

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """What ends the reasoning in reason mode: the answer prefix, the strings the user template sets
        (``{% set stop = [...] %}``) and the ``stop`` option, in that order, without repeats."""
        return tuple(dict.fromkeys((self.answer_prefix, *self._template_stop, *self.config.stop)))

    # ------------------------------------------------------------------ packing

    def build(
        self,
        query: Patient,
        hits: Sequence[Hit],
        pool: dict[str, Patient],
        *,
        risks: Mapping[str, float] | None = None,
        permutation: int = 0,
    ) -> BuiltPrompt:
        """Render and pack the prompt of one query patient.

        Args:
            query: the patient to predict.
            hits: its chosen demonstrations (any order; scores decide dropping).
            pool: pool patients by id (the demos' records).
            risks: the pool model's risk by patient id (query and demos), shown with ``show_risk``.
            permutation: 0 for the configured demo order; m > 0 for the order ensemble's m-th permutation of it.

        Raises:
            ConfigError: when the query alone does not fit the context.
        """
        c = self.config
        room = self.max_context - (c.reason_tokens + c.reserve_tokens if c.mode == "reason" else c.reserve_tokens)
        kept = list(hits) if c.demos != "none" else []
        dropped: list[Hit] = []
        while True:
            ordered = self._order(kept, query.patient_id, permutation)
            text = self.render(query, [(h, pool[h.patient_id]) for h in ordered], risks)
            n = self._count([text])[0]
            if n <= room:
                break
            if not kept:
                raise ConfigError(
                    f"The prompt of patient {query.patient_id} needs {n} tokens without any demonstration, more than "
                    f"the {room} available (context {self.max_context}). Lower the query history budget "
                    f"(--query-tokens, now {c.query_tokens}) or raise --max-context."
                )
            weakest = min(kept, key=lambda h: (h.score, h.patient_id))
            kept.remove(weakest)
            dropped.append(weakest)
        truncated = {}
        q = self.history(query, c.query_tokens)
        if q.dropped:
            truncated[query.patient_id] = len(q.dropped)
        for h in ordered:
            s = self.history(pool[h.patient_id], c.demo_tokens, demo=True)
            if s.dropped:
                truncated[h.patient_id] = len(s.dropped)
        return BuiltPrompt(text, n, list(self.choices), ordered, dropped, truncated, self.template_name)
