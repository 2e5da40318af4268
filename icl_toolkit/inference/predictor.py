"""The prompted predictor: retrieval + prompt + backend -> predictions with provenance.

:class:`Predictor` follows the estimator contract: ``__init__`` stores settings,
:meth:`Predictor.fit` attaches the demonstration pool (building or loading and
checking its index) and returns self, :meth:`Predictor.predict_proba` returns
one :class:`Prediction` per patient, and :meth:`Predictor.predict` derives hard
labels from it. Using an unfitted predictor raises.

Scoring modes:

``score``
    one forward pass per prompt; P(yes) is the probability of the "Yes" choice
    normalised over the two choices at the answer slot.
``reason``
    the model first writes its reasoning (reason-first template, greedy, cut at
    the answer prefix ``ADRD within 5 years:``), then the prefix is appended and
    the answer slot after it is scored the same way.

The settings come as one :class:`~icl_toolkit.inference.config.PredictConfig` (the spec every
front end builds); :func:`icl_toolkit.inference.run.run_resumable` streams predictions to a
file, resumably.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast, overload

import numpy as np

from icl_toolkit.backends import Backend, GenerationParams, choice_probabilities
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient, check_patients, content_hash
from icl_toolkit.data.task import check_same_task, recorded_task
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.prompting.builder import BuiltPrompt, PromptBuilder
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.retrieval.cache import RetrievalCache
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.gain import GainScores
from icl_toolkit.retrieval.index import DemoIndex
from icl_toolkit.retrieval.retriever import Retrieval, Retriever
from icl_toolkit.retrieval.risk import PoolRisk

__all__ = ["Prediction", "Predictor", "check_pool"]


@dataclass
class Prediction:
    """One patient's prediction and where it came from."""

    patient_id: str
    probability: float
    predicted: int
    label: int | None
    demos: list[dict[str, Any]]
    dropped_demos: list[dict[str, Any]]
    truncated_items: dict[str, int]
    prompt_tokens: int
    prompt_hash: str
    model_id: str
    template: str
    mode: str
    reasoning: str | None = None
    seconds: float = 0.0
    logprobs: list[float] = field(default_factory=list)
    orders: list[float] | None = None
    """With an order ensemble: P(yes) under each demo order (the configured order first)."""
    order_sd: float | None = None
    """With an order ensemble: the standard deviation of P(yes) across orders (a per-patient uncertainty)."""

    def to_dict(self) -> dict[str, Any]:
        """The record as written; a record without an order ensemble has no ``orders`` / ``order_sd`` keys."""
        out = asdict(self)
        for key in ("orders", "order_sd"):
            if out[key] is None:
                del out[key]
        return out


def _hits(hits: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"patient_id": h.patient_id, "score": h.score, "label": h.label} for h in hits]


class Predictor:
    """Prompted prediction with retrieved demonstrations.

    Args:
        backend: a backend (see :mod:`icl_toolkit.backends`).
        config: retrieval, prompt and threshold settings.
        embedder: profile embedder for the dense and hybrid retrievers (default: the embedded MiniLM, loaded at fit
            when the configured retriever needs it).
        retrieval_cache: a JSON file of saved retrievals, reused when it matches and extended otherwise.
        progress: show progress bars.
    """

    def __init__(
        self,
        backend: Backend,
        config: PredictConfig | None = None,
        *,
        embedder: ProfileEmbedder | None = None,
        retrieval_cache: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.backend = backend
        self.config = config or PredictConfig()
        self.embedder = embedder
        self.retrieval_cache = retrieval_cache
        self.progress = progress

    # ------------------------------------------------------------------ fit

    @property
    def uses_demos(self) -> bool:
        return self.config.uses_demos

    def fit(
        self,
        pool: Sequence[Patient],
        index: DemoIndex | str | os.PathLike[str] | None = None,
        *,
        index_kind: str = "auto",
        pool_name: str = "pool",
        gain: GainScores | None = None,
    ) -> Predictor:
        """Attach the demonstration pool; build its index, or load ``index`` and check it matches.

        ``gain``: the pool's gain scores for ``strategy = "gain"`` (default: read from the index folder when one is
        given); they must come from this predictor's model."""
        if gain is None and self.config.retrieval.strategy == "gain" and self.uses_demos:
            if isinstance(index, str | os.PathLike):
                gain = GainScores.load_for(index)
            else:
                raise ConfigError(
                    "strategy gain re-ranks demos by gain scores, which live in an index folder: compute them with "
                    "`icl index gain` and pass that folder as the index (or pass gain=GainScores.load(...))."
                )
        pool = check_patients(pool, "pool")
        self.pool_ = {p.patient_id: p for p in pool}
        self.builder_ = PromptBuilder(self.backend.tokenizer, self.config.prompt, self.backend.max_context)
        self.retriever_: Retriever | None = None
        self.risk_: PoolRisk | None = None
        if self.uses_demos:
            check_pool(pool, self.config.prompt, pool_name)
            if gain is not None:
                gain.check_model(self.backend.model_id, pool_name)
            self.retriever_ = Retriever(self.config.retrieval, self.embedder, gain=gain).fit(
                pool, index, index_kind=index_kind, progress=self.progress
            )
            if index is not None:  # an index built for another task's pool is refused by name
                check_same_task(
                    recorded_task(self.retriever_.index_.meta), self.config.prompt.task.name, "the index", pool_name
                )
        if self.config.prompt.show_risk:
            self.risk_ = PoolRisk(self.config.retrieval).fit(pool)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "builder_"):
            raise ConfigError("This Predictor is not fitted yet. Call fit(pool) first.")

    # ------------------------------------------------------------------ retrieval

    def retrieve(self, patients: Sequence[Patient]) -> list[Retrieval]:
        """The demonstrations of each patient (from the retrieval cache when one is set)."""
        self._check_fitted()
        if self.retriever_ is None:
            return [Retrieval(p.patient_id) for p in patients]
        if self.retrieval_cache is None:
            return self.retriever_.retrieve(patients, progress=self.progress)
        cache = RetrievalCache.open(self.retrieval_cache, self.retriever_.cache_key(self.config.prompt.task.name))
        out = cache.retrieve(self.retriever_, patients, progress=self.progress)
        cache.save(self.retrieval_cache)
        return out

    # ------------------------------------------------------------------ prediction

    def risks(self, patients: Sequence[Patient], retrievals: Sequence[Retrieval]) -> dict[str, float] | None:
        """The pool model's risk of each patient and of each of its demos (``None`` without ``show_risk``)."""
        if self.risk_ is None:
            return None
        shown = list(patients) + [self.pool_[h.patient_id] for r in retrievals for h in r.hits]
        return {p.patient_id: float(x) for p, x in zip(shown, self.risk_.risk(shown))}

    def build_prompts(
        self,
        patients: Sequence[Patient],
        retrievals: Sequence[Retrieval],
        permutation: int = 0,
        risks: dict[str, float] | None = None,
    ) -> list[BuiltPrompt]:
        """Rendered and packed prompts (what the backend will see); ``permutation`` m > 0: the order ensemble's
        m-th demo order; ``risks``: from :meth:`risks` (computed here when not given)."""
        self._check_fitted()
        risks = risks if risks is not None else self.risks(patients, retrievals)
        return [
            self.builder_.build(p, r.hits, self.pool_, risks=risks, permutation=permutation)
            for p, r in zip(patients, retrievals)
        ]

    def _answer(self, texts: list[str]) -> tuple[list[list[float]], list[str | None]]:
        """Choice log-probabilities of each prompt (unique prompts scored once), after the reasoning in reason
        mode; and the reasoning."""
        unique = list(dict.fromkeys(texts))
        reasoning: dict[str, str | None] = dict.fromkeys(unique)
        scored = unique
        if self.config.prompt.mode == "reason":
            c = self.config.prompt
            params = GenerationParams(
                max_new_tokens=c.reason_tokens,
                stop=self.builder_.stop_strings,
                repetition_penalty=c.repetition_penalty,
                no_repeat_ngram_size=c.no_repeat_ngram,
            )
            generated = list(self.backend.generate(unique, params))
            reasoning = dict(zip(unique, generated))
            prefix = self.builder_.answer_prefix
            scored = [t + (r.rstrip() + "\n" if r.strip() else "") + prefix for t, r in zip(unique, generated)]
        logprobs = cast(list[list[float]], self.backend.score(scored, list(self.builder_.choices))) if scored else []
        by_text = dict(zip(unique, logprobs))
        return [by_text[t] for t in texts], [reasoning[t] for t in texts]

    @overload
    def predict_proba(self, patients: Patient, retrievals: Sequence[Retrieval] | None = None) -> Prediction: ...

    @overload
    def predict_proba(
        self, patients: Sequence[Patient], retrievals: Sequence[Retrieval] | None = None
    ) -> list[Prediction]: ...

    def predict_proba(
        self, patients: Patient | Sequence[Patient], retrievals: Sequence[Retrieval] | None = None
    ) -> Prediction | list[Prediction]:
        """One :class:`Prediction` per patient, in input order (a single patient gives a single one)."""
        self._check_fitted()
        single = isinstance(patients, Patient)
        batch = check_patients(patients, "patients")
        if retrievals is None:
            retrievals = self.retrieve(batch)
        elif len(retrievals) != len(batch):
            raise ConfigError(f"Got {len(retrievals)} retrievals for {len(batch)} patients.")
        start = time.perf_counter()
        risks = self.risks(batch, retrievals)
        prompts = self.build_prompts(batch, retrievals, risks=risks)
        # the order ensemble: the configured order, then M-1 seeded permutations of the same demos
        n_orders = self.config.prompt.orders if self.uses_demos else 1
        members = [prompts] + [self.build_prompts(batch, retrievals, m, risks) for m in range(1, n_orders)]
        flat, reasons = self._answer([bp.text for member in members for bp in member])
        logprobs, reasoning = flat[: len(batch)], reasons[: len(batch)]
        per_order = [
            [choice_probabilities(flat[m * len(batch) + i])[0] for m in range(n_orders)] for i in range(len(batch))
        ]
        each = (time.perf_counter() - start) / max(len(batch), 1)
        out = []
        for p, bp, lp, reason, probs in zip(batch, prompts, logprobs, reasoning, per_order):
            prob = float(np.mean(probs))
            out.append(
                Prediction(
                    patient_id=p.patient_id,
                    probability=round(prob, 6),
                    predicted=int(prob >= self.config.threshold),
                    label=p.label,
                    demos=_hits(bp.demos),
                    dropped_demos=_hits(bp.dropped),
                    truncated_items=bp.truncated_items,
                    prompt_tokens=bp.n_tokens,
                    prompt_hash=bp.hash,
                    model_id=self.backend.model_id,
                    template=bp.template,
                    mode=self.config.prompt.mode,
                    reasoning=reason,
                    seconds=round(each, 3),
                    logprobs=[round(x, 5) for x in lp],
                    orders=[round(x, 6) for x in probs] if n_orders > 1 else None,
                    order_sd=round(float(np.std(probs)), 6) if n_orders > 1 else None,
                )
            )
        return out[0] if single else out

    def predict(self, patients: Sequence[Patient]) -> list[int]:
        """Hard labels at the configured threshold."""
        return [p.predicted for p in self.predict_proba(list(patients))]

    def iter_predict(
        self, patients: Sequence[Patient], chunk_size: int = 8, retrievals: Sequence[Retrieval] | None = None
    ) -> Iterator[list[Prediction]]:
        """Retrieve for all patients (unless given), then yield predictions chunk by chunk (for streaming to disk)."""
        patients = list(patients)
        if retrievals is None:
            retrievals = self.retrieve(patients)
        for start in range(0, len(patients), chunk_size):
            yield self.predict_proba(patients[start : start + chunk_size], retrievals[start : start + chunk_size])

    def provenance(self, cohort: Sequence[Patient]) -> dict[str, Any]:
        """What a predictions file depends on (for its metadata sidecar)."""
        self._check_fitted()
        return {
            "model_id": self.backend.model_id,
            "dtype": getattr(self.backend, "dtype", None),
            "config": self.config.model_dump(mode="json"),
            "templates_hash": self.builder_.templates_hash,
            "task": self.config.prompt.task.name,
            "cohort_hash": content_hash(cohort),
            "pool_hash": content_hash(self.pool_.values()),
            "embedder": self.retriever_.representation_.embedder_id if self.retriever_ is not None else None,
        }


def check_pool(pool: Sequence[Patient], prompt: PromptConfig, name: str) -> None:
    """Refuse a demonstration pool that cannot show the demonstrations ``prompt`` asks for: unlabelled patients, or
    missing rationales of the style shown (``name``: the pool's file, for the message).

    Raises:
        ConfigError: naming the first patient at fault and the fix.
    """
    unlabelled = [p.patient_id for p in pool if p.label is None]
    if unlabelled:
        raise ConfigError(
            f"{name}: {len(unlabelled)} pool patients have no label (first: {unlabelled[0]}); "
            "demonstrations need known outcomes. Remove them from the pool."
        )
    if prompt.demos == "rationale":
        missing = [
            p.patient_id for p in pool if p.rationales is None or not getattr(p.rationales, prompt.rationale).strip()
        ]
        if missing:
            raise ConfigError(
                f"{name}: {len(missing)} of {len(pool)} pool patients have no {prompt.rationale} rationale (first: "
                f"{missing[0]}); --demos rationale needs them. Use --demos label, or generate rationales first."
            )
