"""Tabular baselines a reviewer accepts: windowed code counts and value aggregates, gradient-boosted trees
(LightGBM), and a logistic regression, each tuned on the validation split only.

The features follow the MEDS community's tabular baseline (meds-tab: counts and value aggregates per code in
several windows before the prediction time). meds-tab itself is not used: version 0.2.0 pins
``meds-evaluation`` 0.0.3 (this project needs 0.0.6 or later for ``icl data to-meds``' scoring), brings Optuna
2, Hydra sweepers and, through XGBoost 3, a CUDA NCCL wheel onto a CPU machine, and it reads MEDS parquet
shards through a Hydra pipeline rather than a cohort in memory. The same features are computed here from the
cohort format, one patient at a time.

**Windows.** A window of ``w`` days holds the events dated in ``(index_date - w days, index_date]``: an event
``d`` days before the index date is in it when ``0 <= d < w`` (so an event on the index date is in every window
and one exactly ``w`` days before is not). ``"all"`` holds the whole history up to the index date. Nothing dated
after the index date is ever read (:meth:`Patient.history`).

**Features per window.** ``count|<window>|<system:code>``: the events of that code; ``visits|<window>``: the
visits; and for numeric values ``mean|``, ``min|``, ``max|`` per code; plus ``last|<system:code>`` (the most
recent value in the whole history) and ``age``, ``sex=F``. They are built from a stream of patients into one
sparse matrix (scikit-learn's ``DictVectorizer``), so a 100,000-patient pool costs memory in proportion to the
codes its patients have, not to patients times vocabulary.

**Tuning.** A bounded, seeded random search: ``trials`` draws from the grids below (the logistic regression
tries every ``C``), each fit on the pool and scored by AUROC on the validation patients; the best is kept. Test
patients are never read. Without a validation split with both classes the stated defaults are used.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from icl_toolkit.core.artifacts import write_csv_rows
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient

__all__ = [
    "TabularConfig",
    "TabularBaseline",
    "TABULAR_NAMES",
    "fit_tabular",
    "write_tuning",
    "windowed_features",
    "FeatureSpace",
    "Tuned",
    "tune_gbt",
    "tune_logreg",
    "GBT_GRID",
    "GBT_DEFAULT",
    "LOGREG_C",
    "LOGREG_DEFAULT_C",
    "parse_windows",
]

Window = int | str  # days, or "all"

GBT_GRID: dict[str, list[Any]] = {
    "n_estimators": [100, 200, 400],
    "learning_rate": [0.03, 0.06, 0.1],
    "num_leaves": [7, 15, 31],
    "min_child_samples": [10, 20, 40],
    "colsample_bytree": [0.5, 0.8, 1.0],
    "reg_lambda": [0.0, 1.0, 5.0],
}
"""The trees' search space (LightGBM ``LGBMClassifier`` parameters)."""
GBT_DEFAULT: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.06,
    "num_leaves": 15,
    "min_child_samples": 20,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
}
"""The trees' parameters when no validation split can choose them."""
LOGREG_C: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""The logistic regression's inverse regularisation strengths tried."""
LOGREG_DEFAULT_C = 1.0
"""``C`` when no validation split can choose it (scikit-learn's default)."""


def parse_windows(windows: Iterable[Window]) -> tuple[Window, ...]:
    """Validated windows: positive whole days, or ``"all"``; in the order given, without repeats."""
    out: list[Window] = []
    for w in windows:
        if w == "all" or (isinstance(w, int) and not isinstance(w, bool) and w > 0):
            if w not in out:
                out.append(w)
        else:
            raise ConfigError(f'A feature window is a whole number of days above 0 or "all"; got {w!r}.')
    if not out:
        raise ConfigError('Give at least one feature window, e.g. [30, 365, "all"].')
    return tuple(out)


class TabularConfig(BaseModel):
    """The ``[tabular]`` table of arms.toml: the tabular baselines' features and search."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    windows: tuple[int | str, ...] = (30, 365, "all")
    """Feature windows before the index date, in days, or ``"all"`` (the whole history)."""
    trials: int = Field(12, ge=1, le=200)
    """Random-search trials of the trees' parameters on the validation patients."""

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: tuple[int | str, ...]) -> tuple[int | str, ...]:
        try:
            return parse_windows(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


def windowed_features(p: Patient, windows: Sequence[Window] = (30, 365, "all")) -> dict[str, float]:
    """The windowed counts and value aggregates of one patient (see the module's docstring)."""
    feats: dict[str, float] = {"age": (float(p.age_at_index) - 70.0) / 10.0, "sex=F": 1.0 if p.sex == "F" else 0.0}
    values: dict[tuple[str, str], list[float]] = {}
    last: dict[str, float] = {}
    for e in p.history():
        days = (p.index_date - e.date).days
        key = f"{e.system}:{e.code}"
        numeric = isinstance(e.value, int | float) and not isinstance(e.value, bool)
        if numeric:
            last[key] = float(e.value)  # type: ignore[arg-type]  # history() is oldest first
        for w in windows:
            if w != "all" and days >= w:  # type: ignore[operator]
                continue
            if e.kind == "visit":
                name = f"visits|{w}"
                feats[name] = feats.get(name, 0.0) + 1.0
                continue
            name = f"count|{w}|{key}"
            feats[name] = feats.get(name, 0.0) + 1.0
            if numeric:
                values.setdefault((str(w), key), []).append(float(e.value))  # type: ignore[arg-type]
    for (w, key), vs in values.items():
        feats[f"mean|{w}|{key}"] = float(np.mean(vs))
        feats[f"min|{w}|{key}"] = float(min(vs))
        feats[f"max|{w}|{key}"] = float(max(vs))
    for key, v in last.items():
        feats[f"last|{key}"] = v
    return feats


@dataclass
class FeatureSpace:
    """The vocabulary of windowed features, learnt from the pool in one streamed pass."""

    windows: tuple[Window, ...] = (30, 365, "all")
    vectorizer: Any = None
    build_seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def _stream(self, patients: Iterable[Patient]) -> Iterator[dict[str, float]]:
        for p in patients:
            yield windowed_features(p, self.windows)

    def fit_transform(self, pool: Iterable[Patient]) -> Any:
        """The pool's sparse feature matrix (CSR, float32); learns the vocabulary."""
        from sklearn.feature_extraction import DictVectorizer

        start = time.perf_counter()
        self.vectorizer = DictVectorizer(dtype=np.float32, sparse=True)
        x = self.vectorizer.fit_transform(self._stream(pool)).tocsr()
        self.build_seconds = time.perf_counter() - start
        nbytes = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
        self.stats = {
            "patients": int(x.shape[0]),
            "features": int(x.shape[1]),
            "nonzero": int(x.nnz),
            "matrix_mb": round(nbytes / 2**20, 2),
            "seconds": round(self.build_seconds, 2),
            "windows": [str(w) for w in self.windows],
        }
        return x

    def transform(self, patients: Iterable[Patient]) -> Any:
        """Other patients' features in the pool's vocabulary (codes the pool never saw are dropped)."""
        if self.vectorizer is None:
            raise RuntimeError("FeatureSpace.transform before fit_transform")
        return self.vectorizer.transform(self._stream(patients)).tocsr()


@dataclass
class Tuned:
    """A fitted model, the parameters chosen, how they were chosen and every trial."""

    model: Any
    params: dict[str, Any]
    chosen_by: str
    trials: list[dict[str, Any]]
    fit_seconds: float

    def predict(self, x: Any) -> list[float]:
        return self.model.predict_proba(x)[:, 1].tolist()


def _labels(patients: Sequence[Patient], what: str) -> np.ndarray:
    y = np.array([-1 if p.label is None else p.label for p in patients])
    if (y < 0).any() or len(set(y.tolist())) < 2:
        raise ConfigError(f"The tabular baselines need {what} with known labels of both classes.")
    return y


def _val_usable(val: Sequence[Patient] | None) -> bool:
    if not val:
        return False
    return all(p.label is not None for p in val) and len({p.label for p in val}) == 2


def _search(
    make: Any,
    candidates: list[dict[str, Any]],
    x: Any,
    y: np.ndarray,
    xv: Any,
    yv: np.ndarray | None,
    default: dict[str, Any],
) -> Tuned:
    from sklearn.metrics import roc_auc_score

    start = time.perf_counter()
    if yv is None:
        model = make(default).fit(x, y)
        return Tuned(
            model, default, "stated default (no validation split with both classes)", [], time.perf_counter() - start
        )
    trials, best, best_auc = [], None, -1.0
    for i, params in enumerate(candidates):
        t0 = time.perf_counter()
        model = make(params).fit(x, y)
        auc = float(roc_auc_score(yv, model.predict_proba(xv)[:, 1]))
        trials.append(
            {"trial": i + 1, **params, "val_auroc": round(auc, 4), "seconds": round(time.perf_counter() - t0, 2)}
        )
        if auc > best_auc:  # the first of equal scores wins: the order is the seeded draw
            best, best_auc = (model, params), auc
    assert best is not None
    return Tuned(
        best[0], best[1], f"validation AUROC, best of {len(trials)} trials", trials, time.perf_counter() - start
    )


def tune_gbt(
    x: Any,
    pool: Sequence[Patient],
    xv: Any = None,
    val: Sequence[Patient] | None = None,
    *,
    trials: int = 12,
    seed: int = 0,
) -> Tuned:
    """LightGBM trees on the pool's features, parameters drawn ``trials`` times (seeded) from :data:`GBT_GRID`
    and chosen by validation AUROC; :data:`GBT_DEFAULT` without a usable validation split."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    candidates: list[dict[str, Any]] = []
    while len(candidates) < trials:
        c = {k: v[int(rng.integers(len(v)))] for k, v in GBT_GRID.items()}
        c = {k: (float(v) if isinstance(v, float) else int(v)) for k, v in c.items()}
        if c not in candidates:
            candidates.append(c)

    def make(params: dict[str, Any]) -> Any:
        return lgb.LGBMClassifier(
            **params, subsample=1.0, random_state=seed, n_jobs=2, verbose=-1, deterministic=True, force_row_wise=True
        )

    y = _labels(pool, "a pool")
    yv = np.array([p.label for p in val]) if val is not None and _val_usable(val) else None
    return _search(make, candidates, x, y, xv, yv, GBT_DEFAULT)


def tune_logreg(x: Any, pool: Sequence[Patient], xv: Any = None, val: Sequence[Patient] | None = None) -> Tuned:
    """Logistic regression (features as given) with ``C`` chosen from :data:`LOGREG_C` by validation AUROC;
    :data:`LOGREG_DEFAULT_C` without a usable validation split."""
    from sklearn.linear_model import LogisticRegression

    def make(params: dict[str, Any]) -> Any:
        return LogisticRegression(C=params["C"], max_iter=5000)

    y = _labels(pool, "a pool")
    yv = np.array([p.label for p in val]) if val is not None and _val_usable(val) else None
    return _search(make, [{"C": c} for c in LOGREG_C], x, y, xv, yv, {"C": LOGREG_DEFAULT_C})


TABULAR_NAMES = {"logreg": "logreg codes+age+sex", "gbt": "gbt windowed counts"}
"""Each tabular baseline's name in reports and file names."""


@dataclass
class TabularBaseline:
    """One tuned tabular baseline, fit on a pool: what it is, how it was chosen, and how it predicts."""

    kind: str
    name: str
    description: str
    tuned: Tuned
    features: dict[str, Any]
    transform: Any  # patients -> the model's feature matrix

    def predict(self, patients: Sequence[Patient]) -> list[float]:
        return self.tuned.predict(self.transform(patients))

    def summary(self) -> dict[str, Any]:
        return {
            "params": self.tuned.params,
            "chosen_by": self.tuned.chosen_by,
            "fit_seconds": round(self.tuned.fit_seconds, 2),
            "features": self.features,
        }

    def trials(self) -> list[dict[str, Any]]:
        return [{"baseline": self.name, **r} for r in self.tuned.trials]


def fit_tabular(
    kind: str,
    pool: Sequence[Patient],
    val: Sequence[Patient] | None,
    config: TabularConfig | None = None,
    *,
    seed: int = 0,
) -> TabularBaseline:
    """Fit the ``logreg`` or ``gbt`` baseline on ``pool``, tuned on ``val`` (stated defaults without validation
    patients of both classes)."""
    from sklearn.feature_extraction import DictVectorizer

    from icl_toolkit.evaluation.baselines import bag_of_codes

    config = config or TabularConfig()
    val = list(val or [])
    name = TABULAR_NAMES[kind]
    if kind == "logreg":
        vec = DictVectorizer(dtype=np.float32)
        x = vec.fit_transform(bag_of_codes(p) for p in pool)

        def codes(patients: Sequence[Patient]) -> Any:
            return vec.transform(bag_of_codes(p) for p in patients)

        tuned = tune_logreg(x, pool, codes(val), val)
        features: dict[str, Any] = {"features": x.shape[1], "kind": "codes present"}
        what = "logistic regression on a binary bag of pre-index codes, age and sex"
        transform = codes
    elif kind == "gbt":
        space = FeatureSpace(config.windows)
        x = space.fit_transform(pool)
        tuned = tune_gbt(x, pool, space.transform(val), val, trials=config.trials, seed=seed)
        features = space.stats
        what = (
            f"LightGBM trees on code counts and value aggregates in windows of {', '.join(space.stats['windows'])} "
            f"(days before the index date), age and sex ({space.stats['features']} features, built in "
            f"{space.stats['seconds']} s)"
        )
        transform = space.transform
    else:
        raise ConfigError(f"Unknown tabular baseline {kind!r}; use one of {', '.join(TABULAR_NAMES)}.")
    how = f"{tuned.chosen_by}: " + ", ".join(f"{k}={v}" for k, v in tuned.params.items())
    description = f"{what}, fit on the {len(pool)} pool patients; parameters by {how}"
    return TabularBaseline(kind, name, description, tuned, features, transform)


def write_tuning(path: Path, baselines: Sequence[TabularBaseline]) -> None:
    """Every trial of every baseline's search as one CSV (nothing when none searched)."""
    rows = [r for b in baselines for r in b.trials()]
    if rows:
        write_csv_rows(path, rows)
