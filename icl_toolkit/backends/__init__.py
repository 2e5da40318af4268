"""The backend contract and a lazy registry of backends by name.

A backend wraps one language model and offers two batch methods:

``score(prompts, choices) -> log-probs per choice``
    For each prompt, the log-probability (natural log, under the full
    vocabulary) of each answer choice written right after the prompt. A choice
    of several tokens gets the sum over its tokens. Leading spaces matter: the
    choice is tokenised in context, so ``"Answer:"`` + ``" Yes"`` and a chat
    prompt ending in ``"\\n"`` + ``"Yes"`` each get the token the model would
    actually produce. A single prompt (a ``str``) gives a single list.

``generate(prompts, params) -> texts``
    The continuation of each prompt (without the prompt), cut at the first stop
    string. A single prompt gives a single string.

Backends are registered as ``"module:Class"`` strings and imported only when
chosen, so vLLM is imported only by those who ask for it. A missing optional
dependency names the extra to install.

:class:`BaseBackend` holds what every backend shares: the one-or-many
convention, the checks of prompts, choices and lengths, the scoring plan (each
choice tokenised in context), cutting generations at stop strings, ``encode``
and ``count_tokens``. A backend implements only ``_score(plan)`` and
``_generate(ctxs, params)``, and declares in ``engine_options`` which engine
options (:class:`~icl_toolkit.backends.options.EngineOptions`) it accepts; its
constructor holds their defaults. Any other option set for it is refused.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.core.errors import ConfigError

__all__ = [
    "Backend",
    "BaseBackend",
    "GenerationParams",
    "BACKENDS",
    "get_backend_class",
    "make_backend",
    "resolve_backend_name",
    "choice_probabilities",
    "encode_prompt",
    "continuation_ids",
    "cut_at_stop",
    "no_ngram_repeats",
    "encode_checked",
    "plan_scoring",
    "ScoringPlan",
]


class GenerationParams(BaseModel):
    """Sampling parameters for :meth:`Backend.generate` (validated, unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(128, ge=1, le=8192)
    """Most tokens to generate per prompt."""
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    """0 means greedy decoding (deterministic); above 0 samples."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (only when sampling)."""
    seed: int = 0
    """Seed for sampling; greedy decoding ignores it."""
    stop: tuple[str, ...] = ()
    """Generation is cut at the first of these strings (the string itself removed)."""
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0)
    """Penalty on tokens already in the prompt or the output (1: off)."""
    no_repeat_ngram_size: int = Field(0, ge=0, le=64)
    """No n-gram of this many tokens appears twice in the output (0: off; the transformers backend only)."""


@runtime_checkable
class Backend(Protocol):
    """What every backend provides (see the module docstring for the semantics)."""

    model_id: str
    tokenizer: Any
    max_context: int
    progress: bool

    def score(self, prompts: str | Sequence[str], choices: Sequence[str]) -> list[float] | list[list[float]]: ...

    def generate(self, prompts: str | Sequence[str], params: GenerationParams | None = None) -> str | list[str]: ...


BACKENDS: dict[str, str] = {
    "hf": "icl_toolkit.backends.hf:HFBackend",
    "vllm": "icl_toolkit.backends.vllm:VLLMBackend",
    "openai": "icl_toolkit.backends.openai_api:OpenAIBackend",
}


def get_backend_class(name: str) -> type:
    """The backend class registered as ``name`` (imported now, not before)."""
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown backend {name!r}.{hint} Available: {', '.join(sorted(BACKENDS))}.")
    module_name, _, cls_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("icl_toolkit"):
            raise ConfigError(f"Backend {name!r} is not available in this version of icl-toolkit.") from None
        raise
    return getattr(module, cls_name)


def resolve_backend_name(name: str) -> str:
    """``auto`` becomes ``vllm`` when vLLM is importable and a GPU is visible, else ``hf``."""
    if name != "auto":
        return name
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "hf"


def make_backend(name: str, **kwargs: Any) -> Backend:
    """Build the backend registered as ``name`` (or ``auto``) with its keyword arguments."""
    return get_backend_class(resolve_backend_name(name))(**kwargs)


def choice_probabilities(logprobs: Sequence[float]) -> list[float]:
    """Normalise choice log-probs to probabilities over the choices only (softmax)."""
    top = max(logprobs)
    exps = [math.exp(lp - top) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt; special tokens are added only when the text does not carry them."""
    bos = tokenizer.bos_token
    return list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids)


def continuation_ids(tokenizer: Any, prompt: str, ctx: list[int], choice: str) -> list[int]:
    """The tokens ``choice`` adds after ``prompt`` (tokenised in context, as the model would read it)."""
    whole = encode_prompt(tokenizer, prompt + choice)
    if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
        return whole[len(ctx) :]
    # the choice merged with the prompt's last token: score the choice's own tokens
    own = list(tokenizer(choice, add_special_tokens=False).input_ids)
    if not own:
        raise ConfigError(f"The answer choice {choice!r} encodes to no tokens.")
    return own


def encode_checked(
    tokenizer: Any, prompts: Sequence[str], room: int, max_context: int, model_id: str
) -> list[list[int]]:
    """Each prompt's token ids, raising when a prompt plus ``room`` new tokens exceeds ``max_context``."""
    ctxs = [encode_prompt(tokenizer, p) for p in prompts]
    for i, c in enumerate(ctxs):
        if len(c) + room > max_context:
            raise ConfigError(
                f"Prompt {i} has {len(c) + room} tokens, more than the context limit of {max_context} "
                f"of {model_id}. Lower --k or the history budgets, or raise --max-context."
            )
    return ctxs


@dataclass
class ScoringPlan:
    """What :meth:`Backend.score` needs: prompt ids, each choice's tokens in context, and which prompts
    can be read off one next-token distribution (``fast``: every choice one distinct token) and which
    need the log-probability of a token sequence (``slow``)."""

    ctxs: list[list[int]]
    conts: list[list[list[int]]]
    fast: list[int]
    slow: list[int]


def plan_scoring(
    tokenizer: Any, prompts: Sequence[str], choices: Sequence[str], max_context: int, model_id: str
) -> ScoringPlan:
    """Encode ``prompts`` (checking length) and tokenise every choice in context."""
    ctxs = encode_checked(tokenizer, prompts, 1, max_context, model_id)
    conts = [[continuation_ids(tokenizer, p, c, ch) for ch in choices] for p, c in zip(prompts, ctxs)]
    fast = [i for i, cs in enumerate(conts) if all(len(x) == 1 for x in cs) and len({x[0] for x in cs}) == len(cs)]
    quick = set(fast)
    return ScoringPlan(ctxs, conts, fast, [i for i in range(len(prompts)) if i not in quick])


class BaseBackend:
    """The shared part of every backend (see the module docstring).

    Subclasses set ``model_id``, ``tokenizer``, ``max_context`` and ``progress`` in their constructor and
    implement :meth:`_score` and :meth:`_generate`.
    """

    engine_options: ClassVar[tuple[str, ...]] = ()
    """The :class:`~icl_toolkit.backends.options.EngineOptions` fields this backend takes as constructor
    arguments (with its own defaults); any other option set for it is refused."""

    model_id: str
    tokenizer: Any
    max_context: int
    progress: bool = True

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt; special tokens are added only when the text does not carry them."""
        return encode_prompt(self.tokenizer, text)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Prompt lengths in tokens, as :meth:`score` would see them."""
        return [len(self.encode(t)) for t in texts]

    def score(self, prompts: str | Sequence[str], choices: Sequence[str]) -> list[float] | list[list[float]]:
        """Log-probabilities of each choice after each prompt (see :mod:`icl_toolkit.backends`)."""
        batch, single = as_batch(prompts)
        choices = check_choices(choices)
        plan = plan_scoring(self.tokenizer, batch, choices, self.max_context, self.model_id)
        out = self._score(plan, len(choices)) if batch else []
        return out[0] if single else out

    def generate(self, prompts: str | Sequence[str], params: GenerationParams | None = None) -> str | list[str]:
        """Continuations of each prompt (greedy unless ``params.temperature > 0``), cut at the stop strings."""
        batch, single = as_batch(prompts)
        params = params or GenerationParams()
        ctxs = encode_checked(self.tokenizer, batch, params.max_new_tokens, self.max_context, self.model_id)
        texts = [cut_at_stop(t, params.stop) for t in self._generate(ctxs, params)] if batch else []
        return texts[0] if single else texts

    def _score(self, plan: ScoringPlan, n_choices: int) -> list[list[float]]:
        """Choice log-probs of every prompt of ``plan`` (``plan.fast``: one next-token distribution each)."""
        raise NotImplementedError

    def _generate(self, ctxs: list[list[int]], params: GenerationParams) -> list[str]:
        """The decoded continuation of each prompt's token ids (stop strings are cut by the caller)."""
        raise NotImplementedError


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first of the ``stop`` strings (which is removed)."""
    cut = len(text)
    for s in stop:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
    return text[:cut]


def no_ngram_repeats(params: GenerationParams, backend: str) -> None:
    """Refuse ``no_repeat_ngram_size`` on a backend whose engine has no such option (vLLM, and servers of it).

    Raises:
        ConfigError: naming the options that work there.
    """
    if params.no_repeat_ngram_size:
        raise ConfigError(
            f"no_repeat_ngram ({params.no_repeat_ngram_size}) is a transformers generation option; the {backend} "
            "backend has none. Use --repetition-penalty or stop strings (--stop) there, or --backend hf."
        )


def as_batch(prompts: str | Sequence[str]) -> tuple[list[str], bool]:
    """``(list of prompts, was_single)``, for the one-or-many convention."""
    if isinstance(prompts, str):
        return [prompts], True
    out = list(prompts)
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise ConfigError(f"prompts[{i}] must be a string, got {type(p).__name__}.")
    return out, False


def check_choices(choices: Sequence[str]) -> list[str]:
    """Validate answer choices: at least two distinct, non-empty strings."""
    if isinstance(choices, str):
        raise ConfigError("The 'choices' parameter must be a list of strings such as ['Yes', 'No'], not one string.")
    out = list(choices)
    if len(out) < 2 or len(set(out)) != len(out) or any(not isinstance(c, str) or not c for c in out):
        raise ConfigError(f"The 'choices' parameter must hold at least two distinct non-empty strings. Got {out!r}.")
    return out
