"""A probe of a language model's own representation: what the frozen model *represents* about a patient,
beside what it *says* when prompted.

Each patient's zero-shot prompt (the one the ``<checkpoint> / none / score`` arm reads) goes through the frozen
model once; its hidden states at a few layers are pooled two ways (the mean over the prompt's tokens, and the
last token's), and a logistic regression on standardised states is fit on the demonstration pool and scored on
the test patients (linear probing, as CEHR-GPT and EHRSHOT-style LLM-encoder work do).

**Choices on validation patients only.** The layer, the pooling and the regression's ``C`` are chosen by AUROC
on the validation patients (every combination of :func:`probe_layers`, :data:`POOLINGS` and :data:`PROBE_C`);
without validation patients of both classes, the stated default :data:`DEFAULT_CHOICE` (the layer at two thirds
of the depth, mean pooling, ``C`` = 0.1). The test patients' labels are never read.

**Cache.** The pooled states are stored in chunks under ``<out>/probes/<arm>/`` with the model's content id, the
prompt templates' hash and the layers in ``meta.json``; a rerun reads them back, an interrupted one computes
only the chunks missing, and a cache made by another model or prompt is discarded, with a note.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icl_toolkit.core.artifacts import write_json_atomic
from icl_toolkit.core.errors import ConfigError

__all__ = [
    "POOLINGS",
    "PROBE_C",
    "DEFAULT_CHOICE",
    "probe_layers",
    "StateCache",
    "choose_probe",
    "fit_probe",
    "probe_probabilities",
]

POOLINGS = ("mean", "last")
PROBE_C: tuple[float, ...] = (0.01, 0.1, 1.0)
DEFAULT_CHOICE = {"layer": "two thirds of the depth", "pooling": "mean", "C": 0.1}
CHUNK = 64


def probe_layers(n_layers: int, count: int = 6) -> list[int]:
    """``count`` layers spread evenly from the first block to the last (the last always included)."""
    return sorted({int(round(x)) for x in np.linspace(max(1, n_layers / count), n_layers, count)})


class StateCache:
    """Pooled hidden states of named cohorts, in chunks of :data:`CHUNK` patients, under one folder."""

    def __init__(self, folder: Path, meta: dict[str, Any], note: Callable[[str], None] = print) -> None:
        self.folder = folder
        meta_path = folder / "meta.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if isinstance(old.get("templates_hash"), str):  # states made before templates read the task's words
                from icl_toolkit.prompting.templates import current_templates_hash

                old["templates_hash"] = current_templates_hash(old["templates_hash"])
            if old != json.loads(json.dumps(meta)):
                changed = sorted(k for k in {*old, *meta} if old.get(k) != meta.get(k))
                note(f"note: {folder}: cached states were made with other {', '.join(changed)}; recomputing them")
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(meta_path, meta)

    def states(
        self,
        name: str,
        ids: Sequence[str],
        compute: Callable[[list[int]], np.ndarray],
        advance: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """The states of ``ids`` (cohort ``name``): cached chunks read back (when they hold the same ids), the
        rest computed with ``compute(positions)`` and stored."""
        parts = []
        for start in range(0, len(ids), CHUNK):
            chunk = list(range(start, min(start + CHUNK, len(ids))))
            path = self.folder / f"{name}-{start // CHUNK:05d}.npz"
            want = [ids[i] for i in chunk]
            if path.exists():
                with np.load(path) as z:
                    if z["ids"].tolist() == want:
                        parts.append(z["states"])
                        if advance is not None:
                            advance(len(chunk))
                        continue
            states = compute(chunk)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, ids=np.array(want), states=states.astype(np.float16))
            tmp.replace(path)
            parts.append(states.astype(np.float16))
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,))


def _features(states: np.ndarray, layer_pos: int, pooling: str) -> np.ndarray:
    return states[:, layer_pos, POOLINGS.index(pooling), :]


def fit_probe(x: np.ndarray, y: np.ndarray, C: float) -> Any:
    """Standardised logistic regression (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)).fit(x, y)


def choose_probe(
    pool_states: np.ndarray,
    y_pool: np.ndarray,
    val_states: np.ndarray | None,
    y_val: np.ndarray | None,
    layers: Sequence[int],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The layer, pooling and ``C`` with the highest validation AUROC, and every trial; the stated default
    without validation patients of both classes."""
    from sklearn.metrics import roc_auc_score

    if len(set(np.asarray(y_pool).tolist())) < 2:
        raise ConfigError("A probe needs a pool with known labels of both classes.")
    if val_states is None or y_val is None or len(set(np.asarray(y_val).tolist())) < 2:
        depth = layers[min(len(layers) - 1, int(round(2 * (len(layers) - 1) / 3)))]
        return {
            "layer": depth,
            "pooling": "mean",
            "C": 0.1,
            "chosen_by": "stated default (no validation patients of both classes)",
        }, []
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for j, layer in enumerate(layers):
        for pooling in POOLINGS:
            for c in PROBE_C:
                model = fit_probe(_features(pool_states, j, pooling), y_pool, c)
                auc = float(roc_auc_score(y_val, model.predict_proba(_features(val_states, j, pooling))[:, 1]))
                trials.append({"layer": layer, "pooling": pooling, "C": c, "val_auroc": round(auc, 4)})
                if best is None or auc > best["val_auroc"]:
                    best = trials[-1]
    assert best is not None
    return {
        **{k: best[k] for k in ("layer", "pooling", "C")},
        "chosen_by": f"validation AUROC {best['val_auroc']:.3f}, best of {len(trials)} trials",
    }, trials


def probe_probabilities(
    choice: dict[str, Any],
    layers: Sequence[int],
    pool_states: np.ndarray,
    y_pool: np.ndarray,
    *others: np.ndarray,
) -> list[np.ndarray]:
    """Fit the chosen probe on the pool and return its probabilities for each of ``others``."""
    j = list(layers).index(choice["layer"])
    model = fit_probe(_features(pool_states, j, choice["pooling"]), y_pool, choice["C"])
    return [model.predict_proba(_features(s, j, choice["pooling"]))[:, 1] for s in others]
