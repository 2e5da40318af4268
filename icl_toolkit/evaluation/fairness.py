"""Subgroup performance and fairness of probabilistic predictions, through fairlearn's ``MetricFrame``.

Per predictor (an arm, a baseline, the oracle) and per grouping (sex, age band, and every attribute in
``Patient.groups``):

- per group: n, cases, AUROC, AUPRC, Brier, calibration slope and calibration intercept, each with
  fairlearn's bootstrap interval (``MetricFrame(n_boot=..., ci_quantiles=...)``: rows resampled with
  replacement, seeded), plus selection rate, TPR and FPR at the predictor's threshold;
- the gap: the largest between-group difference of AUROC (``MetricFrame.difference``) with its bootstrap
  interval (``difference_ci``); fairlearn's demographic-parity difference and equalized-odds difference at the
  threshold, with intervals for the selection-rate, TPR and FPR differences they are made of. The gap is a
  maximum of noisy differences, never negative: its value and interval lean upward even between groups of
  equal true AUROC, so an interval above 0 is not by itself a disparity (the excess gap below is);
- the **excess gap** against the oracle (the true risk of a synthetic cohort) and against a reference
  predictor: ``gap(this) - gap(other)`` on the same bootstrap resamples (paired), so "this arm widens the
  disparity the data itself has" is a number with an interval. fairlearn bootstraps one predictor at a time,
  so this paired difference is computed here, with the same AUROC and the same kind of resampling.

Calibration slope and intercept are those of logistic recalibration (Van Calster et al. 2019): the slope of
``logit P(y) = a + b logit(p)``, and the intercept ``a`` with the slope fixed at 1 (calibration in the large;
0 and 1 are ideal). They are solved by a few Newton steps here (thousands of bootstrap fits make
scikit-learn's solver the bottleneck); a test checks them against ``LogisticRegression``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from icl_toolkit.core.artifacts import write_json_atomic
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient
from icl_toolkit.evaluation.metrics import Labels, Probabilities

__all__ = [
    "ORACLE",
    "GROUP_METRICS",
    "age_band",
    "auroc_or_nan",
    "group_attributes",
    "calibration_slope",
    "calibration_intercept",
    "subgroup_frame",
    "FairnessReport",
    "fairness_report",
    "excess_gap",
    "gaps_markdown",
    "subgroups_markdown",
    "plot_fairness",
    "write_fairness_tables",
    "predictions_with_cohort",
    "load_cache",
    "save_cache",
]

ORACLE = "oracle true risk"
"""The name the oracle (a synthetic cohort's true risk) goes by in comparisons and reports."""
GROUP_METRICS = ("auroc", "auprc", "brier", "calibration_slope", "calibration_intercept")
_RATES = ("selection_rate", "tpr", "fpr")
CACHE_VERSION = 1
"""Bumped whenever what a fairness row holds or how it is computed changes: an older cache is then ignored."""
_EPS = 1e-6


def age_band(age: float) -> str:
    """Age bands used for subgroup metrics."""
    return "<70" if age < 70 else "70-79" if age < 80 else "80+"


def group_attributes(patients: Sequence[Patient]) -> dict[str, list[str]]:
    """The groupings of a cohort: sex, age band at the index date, and each attribute of ``Patient.groups``
    (``"unknown"`` for a patient without it), in patient order."""
    out: dict[str, list[str]] = {
        "sex": [p.sex for p in patients],
        "age_band": [age_band(p.age_at_index) for p in patients],
    }
    for attr in sorted({a for p in patients for a in p.groups}):
        out[attr] = [p.groups.get(attr, "unknown") for p in patients]
    return out


# --------------------------------------------------------------------------- metric functions


def auroc_or_nan(y: Any, p: Any) -> float:
    """AUROC by midranks (equal to scikit-learn's); NaN when the group has one class."""
    from scipy.stats import rankdata

    y, p = np.asarray(y), np.asarray(p, dtype=float)
    m = int(y.sum())
    n = len(y) - m
    if m == 0 or n == 0:
        return float("nan")
    r = rankdata(p)
    return float((r[y == 1].sum() - m * (m + 1) / 2) / (m * n))


def _auprc(y: Any, p: Any) -> float:
    from sklearn.metrics import average_precision_score

    y = np.asarray(y)
    if y.min() == y.max():
        return float("nan")
    return float(average_precision_score(y, np.asarray(p, dtype=float)))


def _brier(y: Any, p: Any) -> float:
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y)) ** 2))


def _logit(p: Any) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def _newton(x: np.ndarray, y: np.ndarray, offset: np.ndarray, iters: int = 50) -> np.ndarray | None:
    """Maximum-likelihood coefficients of ``logit P(y) = x @ beta + offset``; None when they do not exist
    (one class, separation) or do not converge."""
    if y.min() == y.max():
        return None
    beta = np.zeros(x.shape[1])
    for _ in range(iters):
        mu = 1 / (1 + np.exp(-(x @ beta + offset)))
        w = mu * (1 - mu)
        hess = x.T @ (x * w[:, None])
        try:
            step = np.linalg.solve(hess, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.all(np.isfinite(beta)) or np.abs(beta).max() > 50:
            return None
        if np.abs(step).max() < 1e-8:
            return beta
    return None


def calibration_slope(y: Any, p: Any) -> float:
    """Slope ``b`` of ``logit P(y=1) = a + b logit(p)`` (1 is ideal; below 1: predictions too extreme)."""
    y, lp = np.asarray(y, dtype=float), _logit(p)
    beta = _newton(np.column_stack([np.ones_like(lp), lp]), y, np.zeros_like(lp))
    return float(beta[1]) if beta is not None else float("nan")


def calibration_intercept(y: Any, p: Any) -> float:
    """Calibration in the large: ``a`` of ``logit P(y=1) = a + logit(p)`` (0 is ideal; above 0: risk
    underestimated)."""
    y, lp = np.asarray(y, dtype=float), _logit(p)
    beta = _newton(np.ones((len(lp), 1)), y, lp)
    return float(beta[0]) if beta is not None else float("nan")


def _rates(threshold: float) -> dict[str, Any]:
    """Selection rate, TPR and FPR at ``threshold`` (numpy; fairlearn's own functions go through scikit-learn's
    confusion matrix, several times slower inside a bootstrap; a test checks they agree)."""

    def rate(which: int | None) -> Any:
        def fn(y: Any, p: Any) -> float:
            pred = np.asarray(p, dtype=float) >= threshold
            if which is not None:
                pred = pred[np.asarray(y) == which]
            return float(pred.mean()) if len(pred) else float("nan")

        return fn

    return {"selection_rate": rate(None), "tpr": rate(1), "fpr": rate(0)}


def _metric_functions(threshold: float) -> dict[str, Any]:
    return {
        "n": lambda y, p: float(len(y)),
        "cases": lambda y, p: float(np.sum(y)),
        "auroc": auroc_or_nan,
        "auprc": _auprc,
        "brier": _brier,
        "calibration_slope": calibration_slope,
        "calibration_intercept": calibration_intercept,
        **_rates(threshold),
    }


# --------------------------------------------------------------------------- frames


def subgroup_frame(
    y: Labels,
    p: Probabilities,
    values: Sequence[str] | npt.NDArray[Any],
    *,
    threshold: float = 0.5,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    metrics: Sequence[str] | None = None,
) -> Any:
    """fairlearn's ``MetricFrame`` of one predictor over one grouping, with bootstrap intervals
    (``n_boot`` 0: point values only); ``metrics`` picks some of ``n``, ``cases``, ``auroc``, ``auprc``, ``brier``,
    ``calibration_slope``, ``calibration_intercept``, ``selection_rate``, ``tpr``, ``fpr`` (all by default: each
    one is computed in every resample)."""
    import sklearn
    from fairlearn.metrics import MetricFrame

    functions = _metric_functions(threshold)
    unknown = sorted(set(metrics or ()) - set(functions))
    if unknown:
        raise ConfigError(f"unknown subgroup metric(s) {', '.join(unknown)}; choose from {', '.join(functions)}")
    chosen = {m: functions[m] for m in metrics} if metrics else functions
    tail = (1 - level) / 2
    boot = {"n_boot": n_boot, "ci_quantiles": [tail, 1 - tail], "random_state": seed} if n_boot else {}
    # the metric functions get arrays fairlearn has already checked; skipping scikit-learn's per-call parameter
    # validation makes the bootstrap several times faster
    # a group with one class in a resample has no AUROC there: NaN, and fairlearn's nanquantile warns about
    # groups that are NaN in every resample (their interval is NaN, shown as "-")
    with sklearn.config_context(skip_parameter_validation=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return MetricFrame(
            metrics=chosen,
            y_true=np.asarray(y, dtype=int),
            y_pred=np.asarray(p, dtype=float),
            sensitive_features=np.asarray(values, dtype=object),
            **boot,
        )


def _gap_samples(y: np.ndarray, probs: Sequence[np.ndarray], values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """AUROC gap (max - min over groups with both classes) of each predictor in each resample: [R, P]."""
    levels = np.unique(values)
    out = np.full((len(rows), len(probs)), np.nan)
    for r, idx in enumerate(rows):
        yr, vr = y[idx], values[idx]
        for j, p in enumerate(probs):
            aucs = [auroc_or_nan(yr[vr == g], p[idx][vr == g]) for g in levels]
            aucs = [a for a in aucs if not np.isnan(a)]
            if len(aucs) >= 2:
                out[r, j] = max(aucs) - min(aucs)
    return out


def excess_gap(
    y: Labels,
    p: Probabilities,
    p_other: Probabilities,
    values: Sequence[str] | npt.NDArray[Any],
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """``AUROC gap(p) - AUROC gap(p_other)`` over the groups in ``values``, with a paired percentile bootstrap
    interval (both predictors on the same resamples). Above 0: ``p`` separates outcomes less evenly across the
    groups than ``p_other`` does."""
    y_, v = np.asarray(y, dtype=int), np.asarray(values, dtype=object)
    a, b = np.asarray(p, dtype=float), np.asarray(p_other, dtype=float)
    point = _gap_samples(y_, [a, b], v, np.arange(len(y_))[None, :])[0]
    diff = float(point[0] - point[1])
    if not n_boot or np.isnan(diff):
        return {"value": diff, "lo": float("nan"), "hi": float("nan")}
    rows = np.random.default_rng(seed).integers(0, len(y_), size=(n_boot, len(y_)))
    samples = _gap_samples(y_, [a, b], v, rows)
    d = samples[:, 0] - samples[:, 1]
    d = d[~np.isnan(d)]
    tail = (1 - level) / 2
    lo, hi = np.quantile(d, [tail, 1 - tail]) if len(d) else (np.nan, np.nan)
    return {"value": diff, "lo": float(lo), "hi": float(hi)}


@dataclass
class FairnessReport:
    """``subgroups``: one row per predictor, grouping and group; ``gaps``: one row per predictor and grouping."""

    subgroups: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    oracle: str | None = None
    reference: str | None = None
    n_boot: int = 0
    cache_keys: list[str] = field(default_factory=list)  # the cache entries this report read or wrote


def _ci_cell(frame_ci: list[Any], group: Any, metric: str) -> tuple[float, float]:
    lo, hi = frame_ci[0].loc[group, metric], frame_ci[1].loc[group, metric]
    return float(lo), float(hi)


def _cache_key(
    *,
    prob: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    threshold: float,
    n_boot: int,
    seed: int,
    level: float,
    others: Mapping[str, np.ndarray],
) -> str:
    """A digest of everything one predictor's rows under one grouping depend on."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "threshold": threshold,
                "n_boot": n_boot,
                "seed": seed,
                "level": level,
                "values": [str(x) for x in v],
                "others": sorted(others),
            }
        ).encode()
    )
    for a in (prob, y, *(others[k] for k in sorted(others))):
        h.update(np.ascontiguousarray(a, dtype=float).tobytes())
    return h.hexdigest()


def _predictor_grouping(
    name: str,
    prob: np.ndarray,
    y: np.ndarray,
    gname: str,
    v: np.ndarray,
    *,
    t: float,
    others: Mapping[str, np.ndarray],
    n_boot: int,
    seed: int,
    level: float,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One predictor's subgroup rows and gap row under one grouping (``others``: "oracle"/"reference" ->
    that predictor's probabilities, for the excess gaps)."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    mf = subgroup_frame(y, prob, v, threshold=t, n_boot=n_boot, seed=seed, level=level)
    by = mf.by_group
    ci = mf.by_group_ci if n_boot else None
    subgroups = []
    for g in by.index:
        row: dict[str, Any] = {
            "name": name,
            "group": gname,
            "value": str(g),
            "n": int(by.loc[g, "n"]),
            "cases": int(by.loc[g, "cases"]),
            "threshold": round(t, 6),
        }
        for m in (*GROUP_METRICS, *_RATES):
            row[m] = float(by.loc[g, m])
            if ci is not None and m in GROUP_METRICS:
                row[f"{m}_lo"], row[f"{m}_hi"] = _ci_cell(ci, g, m)
        subgroups.append(row)
    diff = mf.difference()
    aurocs = by["auroc"].dropna()
    gap: dict[str, Any] = {
        "name": name,
        "group": gname,
        "groups": len(by.index),
        "threshold": round(t, 6),
        "auroc_gap": float(diff["auroc"]),
        "lowest_auroc_group": str(aurocs.idxmin()) if len(aurocs) else None,
    }
    if n_boot:
        dci = mf.difference_ci()
        gap["auroc_gap_lo"], gap["auroc_gap_hi"] = float(dci[0]["auroc"]), float(dci[1]["auroc"])
    pred = (prob >= t).astype(int)
    gap["demographic_parity_difference"] = float(demographic_parity_difference(y, pred, sensitive_features=v))
    gap["equalized_odds_difference"] = float(equalized_odds_difference(y, pred, sensitive_features=v))
    for m in _RATES:
        gap[f"{m}_gap"] = float(diff[m])
        if n_boot:
            gap[f"{m}_gap_lo"], gap[f"{m}_gap_hi"] = float(dci[0][m]), float(dci[1][m])
    gap["calibration_intercept_gap"] = float(diff["calibration_intercept"])
    for key, other in others.items():
        e = excess_gap(y, prob, other, v, n_boot=n_boot, seed=seed, level=level)
        gap[f"excess_vs_{key}"], gap[f"excess_vs_{key}_lo"], gap[f"excess_vs_{key}_hi"] = e["value"], e["lo"], e["hi"]
    return subgroups, gap


def fairness_report(
    predictions: Mapping[str, Probabilities],
    labels: Labels,
    groups: Mapping[str, Sequence[str]],
    *,
    thresholds: Mapping[str, float] | None = None,
    oracle: str | None = None,
    reference: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    progress: Callable[[int], None] | None = None,
    cache: MutableMapping[str, Any] | None = None,
) -> FairnessReport:
    """Subgroup metrics and gaps of every predictor (see the module docstring).

    Args:
        predictions: probabilities per predictor name, in the order of ``labels``.
        labels: 0/1 outcomes.
        groups: grouping name -> group value per patient (see :func:`group_attributes`).
        thresholds: per predictor, the threshold of the rates (0.5 when absent).
        oracle: the name (in ``predictions``) of the true risk, when known: the data's own gap.
        reference: the name of a reference predictor the excess gap is also measured against.
        n_boot: bootstrap resamples (fairlearn's for per-group and gap intervals; the same count, paired,
            for the excess gaps); 0 for point values only.
        progress: called with 1 after each predictor and grouping (``len(predictions) * len(groups)`` calls).
        cache: results of earlier calls, keyed by a digest of every input one predictor's rows under one
            grouping depend on (its probabilities, the labels, the groups, its threshold, the oracle's and
            reference's probabilities, the bootstrap settings); found entries are reused, new ones added.
            :func:`load_cache` / :func:`save_cache` keep it in a file (``icl compare`` does, beside its arms).
    """
    y = np.asarray(labels, dtype=int)
    if len(y) == 0 or len(set(y.tolist())) < 2:
        raise ConfigError("A fairness report needs labelled patients of both classes.")
    for name, p in predictions.items():
        if len(p) != len(y):
            raise ConfigError(f"{name}: {len(p)} predictions for {len(y)} labelled patients.")
    for gname, values in groups.items():
        if len(values) != len(y):
            raise ConfigError(f"grouping {gname!r} has {len(values)} values for {len(y)} patients.")
    for given in (oracle, reference):
        if given is not None and given not in predictions:
            raise ConfigError(f"{given!r} is not among the predictions ({', '.join(predictions)}).")
    thresholds = thresholds or {}
    report = FairnessReport(oracle=oracle, reference=reference, n_boot=n_boot)
    for name, p in predictions.items():
        prob = np.asarray(p, dtype=float)
        t = float(thresholds.get(name, 0.5))
        others = {
            key: np.asarray(predictions[other], dtype=float)
            for key, other in (("oracle", oracle), ("reference", reference))
            if other is not None and other != name
        }
        for gname, values in groups.items():
            v = np.asarray(values, dtype=object)
            if cache is None:
                subgroups, gap = _predictor_grouping(
                    name, prob, y, gname, v, t=t, others=others, n_boot=n_boot, seed=seed, level=level
                )
            else:
                key = _cache_key(prob=prob, y=y, v=v, threshold=t, n_boot=n_boot, seed=seed, level=level, others=others)
                if key not in cache:
                    found = _predictor_grouping(
                        name, prob, y, gname, v, t=t, others=others, n_boot=n_boot, seed=seed, level=level
                    )
                    cache[key] = {"subgroups": found[0], "gap": found[1]}
                report.cache_keys.append(key)
                subgroups, gap = copy.deepcopy(cache[key]["subgroups"]), copy.deepcopy(cache[key]["gap"])
                for r in (*subgroups, gap):  # the same predictions may sit under another name now
                    r["name"], r["group"] = name, gname
            report.subgroups += subgroups
            report.gaps.append(gap)
            if progress is not None:
                progress(1)
    return report


def load_cache(path: Path) -> dict[str, Any]:
    """A fairness cache saved by :func:`save_cache`; empty when the file is missing or unreadable (it is only
    a cache: a damaged one is recomputed, never trusted)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("entries", {}) if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}


def save_cache(path: Path, cache: Mapping[str, Any]) -> None:
    """Write ``cache`` atomically (a temporary file renamed over ``path``)."""
    write_json_atomic(path, {"version": CACHE_VERSION, "entries": dict(cache)})


# --------------------------------------------------------------------------- outputs


def _f(x: Any, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _with_ci(r: dict[str, Any], key: str, sign: bool = False) -> str:
    lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
    if lo is None or hi is None or (isinstance(lo, float) and np.isnan(lo)):  # no resamples: no interval to show
        return _f(r.get(key), sign=sign)
    return f"{_f(r[key], sign=sign)} ({_f(r[f'{key}_lo'], sign=sign)} to {_f(r[f'{key}_hi'], sign=sign)})"


def gaps_markdown(report: FairnessReport, groupings: Sequence[str] | None = None) -> str:
    """One row per predictor and grouping: AUROC gap (CI), the group with the lowest AUROC, the excess gap over
    the oracle's and the reference's (paired CIs), demographic-parity and equalized-odds differences."""
    rows = [g for g in report.gaps if groupings is None or g["group"] in groupings]
    head = ["predictor", "grouping", "AUROC gap (95% CI)", "lowest AUROC"]
    if report.oracle:
        head.append("gap - oracle's gap (95% CI)")
    if report.reference:
        head.append(f"gap - `{report.reference}`'s gap (95% CI)")
    head += ["demographic parity diff.", "equalized odds diff."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in rows:
        cells = [g["name"], g["group"], _with_ci(g, "auroc_gap"), str(g.get("lowest_auroc_group") or "-")]
        if report.oracle:
            cells.append(_with_ci(g, "excess_vs_oracle", sign=True) if "excess_vs_oracle" in g else "(oracle)")
        if report.reference:
            cells.append(_with_ci(g, "excess_vs_reference", sign=True) if "excess_vs_reference" in g else "(ref)")
        cells += [_f(g["demographic_parity_difference"]), _f(g["equalized_odds_difference"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def subgroups_markdown(report: FairnessReport, name: str) -> str:
    """One predictor's metrics per group, with bootstrap CIs."""
    lines = [
        "| group | n | cases | AUROC | AUPRC | Brier | calib. slope | calib. intercept | TPR | FPR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.subgroups:
        if r["name"] == name:
            lines.append(
                f"| {r['group']} = {r['value']} | {r['n']} | {r['cases']} | {_with_ci(r, 'auroc')} | "
                f"{_with_ci(r, 'auprc')} | {_with_ci(r, 'brier')} | {_with_ci(r, 'calibration_slope')} | "
                f"{_with_ci(r, 'calibration_intercept', sign=True)} | {_f(r['tpr'])} | {_f(r['fpr'])} |"
            )
    return "\n".join(lines) + "\n"


def plot_fairness(path: str | os.PathLike[str], report: FairnessReport) -> None:
    """AUROC per group (95% CI bars), one panel per grouping, one marker series per predictor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groupings = list(dict.fromkeys(r["group"] for r in report.subgroups))
    names = list(dict.fromkeys(r["name"] for r in report.subgroups))
    fig, axes = plt.subplots(1, len(groupings), figsize=(4.2 * len(groupings), 4.6), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, grouping in zip(axes[0], groupings):
        values = list(dict.fromkeys(r["value"] for r in report.subgroups if r["group"] == grouping))
        for j, name in enumerate(names):
            pts = {r["value"]: r for r in report.subgroups if r["group"] == grouping and r["name"] == name}
            xs = np.arange(len(values)) + (j - (len(names) - 1) / 2) * 0.5 / max(len(names), 1)
            ys = np.array([pts[v]["auroc"] if v in pts else np.nan for v in values])
            lo = np.array([pts[v].get("auroc_lo", np.nan) if v in pts else np.nan for v in values])
            hi = np.array([pts[v].get("auroc_hi", np.nan) if v in pts else np.nan for v in values])
            err = np.vstack([ys - lo, hi - ys]) if not np.all(np.isnan(lo)) else None
            ax.errorbar(
                xs,
                ys,
                yerr=err,
                fmt="o",
                markersize=4,
                capsize=2,
                color=cmap(j % 20),
                label=name if ax is axes[0][0] else None,
            )
        ax.set_xticks(np.arange(len(values)), values)
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.axhline(0.5, color="grey", linewidth=0.8)
        ax.set_title(f"AUROC by {grouping}")
        ax.set_ylim(0.3, 1.0)
        ax.grid(alpha=0.3, axis="y")
    fig.legend(loc="lower center", ncol=min(4, len(names)), fontsize=7)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(names) // 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_fairness_tables(out: str | os.PathLike[str], report: FairnessReport) -> None:
    """``subgroups.csv`` (one row per predictor, grouping and group) and ``fairness_gaps.csv`` (one row per
    predictor and grouping) in the folder ``out``."""
    import pandas as pd

    out = Path(out)
    pd.DataFrame(report.subgroups).round(6).to_csv(out / "subgroups.csv", index=False)
    pd.DataFrame(report.gaps).round(6).to_csv(out / "fairness_gaps.csv", index=False)


def predictions_with_cohort(
    files: Mapping[str, Any], cohort: Sequence[Patient], *, cohort_name: str = "cohort"
) -> tuple[dict[str, list[float]], list[Patient], dict[str, int]]:
    """Join prediction files (``icl predict`` output: ``patient_id`` and ``probability`` per line) with the
    cohort they were made on, over the labelled patients every file predicted.

    Returns the probabilities per name (in patient order), those patients, and counts of what was left out
    (``unlabelled``, ``not_predicted``, ``failed`` records without a probability).

    Raises:
        ConfigError: a prediction for a patient the cohort lacks (naming the file, line and id), or no patient
            left.
    """
    from icl_toolkit.inference.output import read_records

    by_id = {p.patient_id: p for p in cohort}
    probs: dict[str, dict[str, float]] = {}
    dropped = {"unlabelled": 0, "not_predicted": 0, "failed": 0}
    for name, path in files.items():
        got: dict[str, float] = {}
        for line, rec in enumerate(read_records(path), 1):
            pid = rec["patient_id"]
            if pid not in by_id:
                raise ConfigError(
                    f"{path}:{line}: patient_id {pid!r} is not in {cohort_name}; give the cohort the "
                    "predictions were made on (--cohort)."
                )
            p = rec.get("probability")
            if not isinstance(p, (int, float)) or isinstance(p, bool):
                dropped["failed"] += 1
                continue
            got[pid] = float(p)
        probs[name] = got
    keep = []
    for p in cohort:
        if p.label is None:
            dropped["unlabelled"] += 1
        elif all(p.patient_id in got for got in probs.values()):
            keep.append(p)
        else:
            dropped["not_predicted"] += 1
    if not keep:
        raise ConfigError(
            f"No labelled patient of {cohort_name} has a prediction in every file; check that the "
            "prediction files come from this cohort."
        )
    return {name: [got[p.patient_id] for p in keep] for name, got in probs.items()}, keep, dropped
