"""Prompt building: templates from ``icl_toolkit/prompts/`` (package data), demonstrations, chat template, context packing.

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

import importlib.resources
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.artifacts import text_hash
from icl_toolkit.cohort import Patient
from icl_toolkit.errors import ConfigError
from icl_toolkit.retrieve import Hit
from icl_toolkit.serialize import Serialized, mentioned_in, serialize_history, sex_word, token_counter

__all__ = ["Demos", "Mode", "Order", "RationaleStyle", "PromptConfig", "BuiltPrompt", "PromptBuilder", "prompts_dir", "load_templates", "templates_hash", "chat_prompt", "TEMPLATES",
           "task_question"]

Demos = Literal["rationale", "label", "none"]
"""What each demonstration shows: history + rationale + outcome, history + outcome, or no demos."""
Mode = Literal["score", "reason"]
Order = Literal["similar-last", "similar-first", "random"]
RationaleStyle = Literal["free_text", "stepwise"]

TEMPLATES = {"none": "zero_shot", "rationale": "few_shot_rationale", "label": "few_shot_label"}
REASON_TEMPLATE = "reason_first"
SYSTEM_TEMPLATE = "system"
ANSWER_TEMPLATE = "answer"


def prompts_dir() -> Path:
    """The folder of the templates shipped with the package (``icl_toolkit/prompts``, package data)."""
    return Path(str(importlib.resources.files("icl_toolkit") / "prompts"))


def user_prompts_dir() -> Path | None:
    """``$ICL_PROMPTS``: a folder of templates searched before the shipped ones (a file there overrides the
    shipped file of the same name; the rest still come from the package)."""
    env = os.environ.get("ICL_PROMPTS")
    return Path(env).expanduser() if env else None


def load_templates(*names: str, extra_dir: str | Path | None = None) -> tuple[list[Any], str]:
    """Templates ``NAME.j2`` in the sandboxed environment: from ``extra_dir``, then ``$ICL_PROMPTS``, then the
    templates shipped in the package (read through :mod:`importlib.resources`, so an installed wheel has them).

    Returns:
        The templates, in the order asked, and a hash of their sources.

    Raises:
        ConfigError: a template is not there (the message lists the ones that are), or it is not valid Jinja.
    """
    from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined, TemplateNotFound
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    folders = [str(f) for f in (extra_dir, user_prompts_dir()) if f is not None]
    loader = ChoiceLoader([FileSystemLoader(folders), PackageLoader("icl_toolkit", "prompts")])
    env = ImmutableSandboxedEnvironment(loader=loader, undefined=StrictUndefined, trim_blocks=True,
                                        lstrip_blocks=True, keep_trailing_newline=False, autoescape=False)
    try:
        templates = [env.get_template(f"{n}.j2") for n in names]
    except TemplateNotFound as exc:
        known = sorted(t[:-3] for t in env.list_templates(extensions=["j2"]))
        raise ConfigError(f"Prompt template {exc.name!r} not found in {', '.join([*folders, 'the package'])}. "
                          f"Templates there: {', '.join(known) or 'none'} (or give a path to a .j2 file).") from None
    except TemplateSyntaxError as exc:
        raise ConfigError(f"{exc.filename or exc.name}:{exc.lineno}: not a valid template: {exc.message}.") from None
    sources = [env.loader.get_source(env, t.name)[0] for t in templates]
    return templates, text_hash("\0".join(sources))


def chat_prompt(tokenizer: Any, system: str, user: str) -> str:
    """A system and a user message as the model expects them: through its chat template with the generation
    prompt added, or ``system + blank line + user + newline`` for a model without one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{user}\n"


def task_question(horizon_years: float) -> str:
    years = f"{horizon_years:g}"
    return (f"Will this patient be diagnosed with Alzheimer's disease or a related dementia within "
            f"{years} years after the index date?")


class PromptConfig(BaseModel):
    """How prompts are laid out and packed (validated; unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    demos: Demos = "rationale"
    """What each demonstration shows: history + rationale + outcome, history + outcome, or no demos."""
    rationale: RationaleStyle = "free_text"
    """Which rationale of a demonstration to show."""
    mode: Mode = "score"
    """``score``: read P(yes) at the answer slot; ``reason``: the model reasons first (reason-first template)."""
    template: str | None = None
    """Template name in the prompts folder (without ``.j2``) or a file path; default chosen by demos/mode."""
    order: Order = "similar-last"
    """Presentation order of demos; the default puts the most similar next to the query."""
    demo_tokens: int = Field(200, ge=90)
    """History budget per demonstration, in model tokens."""
    query_tokens: int = Field(400, ge=90)
    """History budget of the query patient, in model tokens."""
    max_context: int | None = Field(None, ge=256)
    """Context limit in tokens (default: the model's)."""
    reserve_tokens: int = Field(8, ge=1)
    """Room kept for the answer (score mode) on top of the prompt."""
    reason_tokens: int = Field(160, ge=8, le=2048)
    """Most tokens of reasoning in reason mode (also kept free in the context)."""
    horizon_years: float = Field(5.0, gt=0)
    """Outcome window length, shown in the prompt."""
    seed: int = 0
    """Seed of the ``random`` demo order."""


@dataclass
class BuiltPrompt:
    """A rendered prompt and what packing did to fit it."""

    text: str
    n_tokens: int
    choices: list[str]
    demos: list[Hit]                      # in presentation order
    dropped: list[Hit] = field(default_factory=list)
    truncated_items: dict[str, int] = field(default_factory=dict)   # patient_id -> history items left out
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
            raise ConfigError(f"--template {name}: a template file is a Jinja file ending in .j2; give one, or "
                              "the name of a template in icl_toolkit/prompts (without .j2).")
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

    # ------------------------------------------------------------------ pieces

    choices: tuple[str, ...] = (" Yes", " No")
    """The answer choices, yes first, as they follow the answer prefix."""

    @property
    def answer_prefix(self) -> str:
        """The words that open the answer (and end every demo): ``"ADRD within 5 years:"``."""
        return self._answer.render(horizon_years=f"{self.config.horizon_years:g}").strip()

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

    def _demo_vars(self, hit: Hit, patient: Patient) -> dict[str, Any]:
        rationale = ""
        if self.config.demos == "rationale" and patient.rationales is not None:
            rationale = getattr(patient.rationales, self.config.rationale).strip()
        return {"history": self.history(patient, self.config.demo_tokens, demo=True).text, "rationale": rationale,
                "outcome": "Yes" if hit.label == 1 else "No", "label": hit.label, "score": hit.score}

    def _order(self, hits: list[Hit], query_id: str) -> list[Hit]:
        by_sim = sorted(hits, key=lambda h: (-h.score, h.patient_id))
        if self.config.order == "similar-first":
            return by_sim
        if self.config.order == "similar-last":
            return by_sim[::-1]
        shuffled = list(by_sim)
        random.Random(f"{self.config.seed}:{query_id}").shuffle(shuffled)
        return shuffled

    def render(self, query: Patient, demos: Sequence[tuple[Hit, Patient]]) -> str:
        """The full prompt text for ``query`` with the demos in the given order (no packing)."""
        c = self.config
        variables = {
            "task": task_question(c.horizon_years),
            "horizon_years": f"{c.horizon_years:g}",
            "choices": ["Yes", "No"],
            "query": {"history": self.history(query, c.query_tokens).text, "age": int(query.age_at_index),
                      "sex": sex_word(query.sex)},
            "demos": [self._demo_vars(h, p) for h, p in demos],
            "with_rationales": c.demos == "rationale",
            "answer_prefix": self.answer_prefix,
        }
        system = self._system.render(**variables).strip()
        user = self._user.render(**variables).strip()
        answer = "" if c.mode == "reason" else self.answer_prefix
        return chat_prompt(self.tokenizer, system, user) + answer

    # ------------------------------------------------------------------ packing

    def build(self, query: Patient, hits: Sequence[Hit], pool: dict[str, Patient]) -> BuiltPrompt:
        """Render and pack the prompt of one query patient.

        Args:
            query: the patient to predict.
            hits: its chosen demonstrations (any order; scores decide dropping).
            pool: pool patients by id (the demos' records).

        Raises:
            ConfigError: when the query alone does not fit the context.
        """
        c = self.config
        room = self.max_context - (c.reason_tokens + c.reserve_tokens if c.mode == "reason" else c.reserve_tokens)
        kept = list(hits) if c.demos != "none" else []
        dropped: list[Hit] = []
        while True:
            ordered = self._order(kept, query.patient_id)
            text = self.render(query, [(h, pool[h.patient_id]) for h in ordered])
            n = self._count([text])[0]
            if n <= room:
                break
            if not kept:
                raise ConfigError(
                    f"The prompt of patient {query.patient_id} needs {n} tokens without any demonstration, more than "
                    f"the {room} available (context {self.max_context}). Lower the query history budget "
                    f"(--query-tokens, now {c.query_tokens}) or raise --max-context.")
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
