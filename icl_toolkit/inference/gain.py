"""Gain scores: how much each pool patient helps the model as a demonstration, measured on the pool alone.

For ``strategy = "gain"`` (after Delta-KNN: score a candidate demo by what it does for the model on similar
examples). The design, and why no label leaks:

1. **Folds.** The pool is split into ``folds`` folds by a hash of each subject (never by label), the same
   kind of split the prognostic retriever cross-fits with.
2. **Raw gain, within a fold.** A measured candidate ``c`` is shown as a one-shot demonstration to its
   ``neighbours`` nearest pool patients *of its own fold* (other subjects only), by a label-free similarity
   (codes TF-IDF 3/4, age / sex / history length 1/4: the prognostic retriever without its learned risk). Its raw
   gain is the mean, over those neighbours ``q``, of ``log P(y_q | c shown) - log P(y_q | zero-shot)``: the
   change in the model's log-probability of the neighbour's true outcome (normalised over Yes / No). Only the
   labels of ``c``'s fold enter it.
3. **Cross-fitted score.** Every pool patient's gain score is predicted by a ridge regression (scikit-learn,
   penalty chosen by its own leave-one-out) from the same label-free features, fit on the raw gains of the
   measured candidates of the *other* folds. So a patient's score depends on no label of its own fold, its own
   label included: no patient scores itself, and a test checks that flipping a pool patient's label leaves its
   score unchanged. Test and validation patients never enter.
4. **Cost cap.** ``limit`` measures only that many candidates (a seeded draw); the regression still scores
   every pool patient. The cost is about ``limit x neighbours`` one-shot prompts plus up to as many zero-shot
   prompts, scored in batches.

At prediction time the retriever takes the ``gain_candidates`` most similar pool patients and shows the k with
the highest scores (:mod:`icl_toolkit.retrieval.retriever`). The scores are stored with the index, with the
model's id: they say what a demo did for that model, and another model refuses them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.backends import Backend, choice_probabilities
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.hardware import describe as describe_hardware
from icl_toolkit.core.progress import progress_bar
from icl_toolkit.data.cohort import Patient, check_patients, content_hash
from icl_toolkit.prompting.builder import PromptBuilder, templates_hash
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.retrieval.gain import GainScores
from icl_toolkit.retrieval.representations import PatientRepresentation, PrognosticBlock, SparseBlock, StructuredBlock
from icl_toolkit.retrieval.retriever import Hit

__all__ = ["GainConfig", "compute_gain", "gain_features"]


class GainConfig(BaseModel):
    """How gain scores are measured (``icl index gain``'s options)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    neighbours: int = Field(3, ge=1, le=64)
    """Pool neighbours (same fold, label-free similarity) each measured candidate is shown to as a one-shot demo."""
    limit: int | None = Field(None, ge=2)
    """Measure at most this many candidates (a seeded draw); every pool patient is still scored (default: all)."""
    folds: int = Field(5, ge=2, le=50)
    """Cross-fitting folds (by a hash of the subject): a patient's score comes from the other folds' gains."""
    seed: int = 0
    """Seed of the folds and of the draw of measured candidates."""
    demos: Literal["rationale", "label"] = "rationale"
    """What a one-shot demo shows while gains are measured (one set of scores serves every gain arm of a model, so
    label-only and rationale gain arms show the same demos)."""


def gain_features(pool: Sequence[Patient]) -> np.ndarray:
    """Label-free features of pool patients: the prognostic retriever's clinical part (codes TF-IDF 3/4, age /
    sex / history 1/4) without its learned risk; unit rows, so inner products are similarities."""
    rep = PatientRepresentation("clinical", [SparseBlock(), StructuredBlock()], [0.75, 0.25])
    return rep.fit(pool).pool_vectors()


def _draw(pool: Sequence[Patient], limit: int | None, seed: int) -> list[int]:
    """The rows of the measured candidates: all, or ``limit`` of them by a seeded hash of the id."""
    rows = list(range(len(pool)))
    if limit is None or limit >= len(pool):
        return rows
    key = [hashlib.sha256(f"{seed}:gain:{p.patient_id}".encode()).hexdigest() for p in pool]
    return sorted(sorted(rows, key=lambda r: key[r])[:limit])


def _log_true(logprobs: Sequence[float], label: int) -> float:
    p_yes = choice_probabilities(logprobs)[0]
    p = p_yes if label == 1 else 1.0 - p_yes
    return math.log(max(p, 1e-12))


def compute_gain(
    backend: Backend,
    pool: Sequence[Patient],
    prompt: PromptConfig | None = None,
    config: GainConfig | None = None,
    *,
    progress: bool = True,
) -> GainScores:
    """Gain scores of every pool patient for ``backend``'s model (see the module docstring).

    Args:
        backend: the model the demonstrations are for.
        pool: the labelled demonstration pool (nothing else is read).
        prompt: the prompt layout of the arm the scores are for (its rationale style and budgets; the scoring is
            always one-shot, showing ``config.demos``, against zero-shot, in score mode, one order, without risk
            lines).
        config: neighbours, limit, folds, seed.
        progress: show a progress bar.

    Raises:
        ConfigError: a pool patient without a label, or a pool too small for the folds.
    """
    pool = check_patients(pool, "pool")
    config = config or GainConfig()
    if any(p.label is None for p in pool):
        raise ConfigError(
            "Gain scores measure the model's log-probability of the true outcome; every pool patient needs a label."
        )
    base = (prompt or PromptConfig()).model_copy(
        update={"mode": "score", "orders": 1, "show_risk": False, "demos": config.demos}
    )
    start = time.perf_counter()
    fold = PrognosticBlock(folds=config.folds, seed=config.seed).folds_of(pool)
    x = gain_features(pool)
    by_id = {p.patient_id: p for p in pool}
    one = PromptBuilder(backend.tokenizer, base, backend.max_context)
    zero = PromptBuilder(backend.tokenizer, base.model_copy(update={"demos": "none"}), backend.max_context)

    measured = _draw(pool, config.limit, config.seed)
    pairs: dict[int, list[int]] = {}
    for c in measured:
        same = [r for r in np.flatnonzero(fold == fold[c]) if pool[r].subject_id != pool[c].subject_id]
        if not same:
            continue
        sims = x[same] @ x[c]
        order = sorted(range(len(same)), key=lambda i: (-sims[i], pool[same[i]].patient_id))
        pairs[c] = [int(same[i]) for i in order[: config.neighbours]]
    queries = sorted({q for qs in pairs.values() for q in qs})
    texts = [zero.build(pool[q], [], by_id).text for q in queries]
    slots = {}
    for c, qs in pairs.items():
        hit = Hit(pool[c].patient_id, 1.0, pool[c].label, c)
        for q in qs:
            slots[(c, q)] = len(texts)
            texts.append(one.build(pool[q], [hit], by_id).text)
    logprobs: list[list[float]] = []
    chunk = 64
    with progress_bar(f"gain scores ({backend.model_id})", len(texts), progress) as advance:
        for i in range(0, len(texts), chunk):
            logprobs += list(backend.score(texts[i : i + chunk], list(one.choices)))  # type: ignore[arg-type]
            advance(len(texts[i : i + chunk]))
    base_lp = {q: _log_true(logprobs[i], int(pool[q].label or 0)) for i, q in enumerate(queries)}
    raw = {
        c: float(np.mean([_log_true(logprobs[slots[(c, q)]], int(pool[q].label or 0)) - base_lp[q] for q in qs]))
        for c, qs in pairs.items()
    }
    scores = _crossfit(x, fold, raw, config.folds)
    seconds = time.perf_counter() - start
    rows = sorted(raw)
    agreement = None
    if len(rows) > 2 and np.std([raw[r] for r in rows]) > 0 and np.std(scores[rows]) > 0:
        from scipy.stats import spearmanr

        agreement = round(float(spearmanr([raw[r] for r in rows], scores[rows]).statistic), 4)
    meta: dict[str, Any] = {
        "artifact": "gain_scores",
        "model_id": backend.model_id,
        "pool_hash": content_hash(pool),
        "prompt": base.model_dump(mode="json"),
        "templates_hash": templates_hash(base),
        "settings": config.model_dump(mode="json"),
        "measured": len(raw),
        "prompts": len(texts),
        "seconds": round(seconds, 1),
        "seconds_per_prompt": round(seconds / max(len(texts), 1), 4),
        "mean_raw_gain": round(float(np.mean(list(raw.values()))), 5) if raw else None,
        "crossfit_spearman": agreement,
        "hardware": describe_hardware(),
    }
    return GainScores(
        {p.patient_id: round(float(s), 6) for p, s in zip(pool, scores)},
        meta,
        {pool[c].patient_id: round(g, 6) for c, g in raw.items()},
    )


def _crossfit(x: np.ndarray, fold: np.ndarray, raw: dict[int, float], folds: int) -> np.ndarray:
    """Each pool patient's predicted gain from a ridge regression on the other folds' measured gains."""
    from sklearn.linear_model import RidgeCV

    out = np.zeros(len(x))
    measured = np.array(sorted(raw), dtype=int)
    gains = np.array([raw[r] for r in measured])
    for f in range(folds):
        train = measured[fold[measured] != f]
        held = np.flatnonzero(fold == f)
        if not len(held):
            continue
        if len(train) < 3:
            out[held] = float(np.mean(gains[fold[measured] != f])) if len(train) else 0.0
            continue
        model = RidgeCV(alphas=np.logspace(-2, 3, 11)).fit(x[train], gains[fold[measured] != f])
        out[held] = model.predict(x[held])
    return out
