"""``icl monitor``: a served predictor's log, window by window, against alert thresholds.

Per window (``--window 30d``; windows start at the first logged prediction), against a **reference**: the
demonstration pool as ``icl serve`` summarised it in ``reference.json`` (:mod:`.reference`), or the pool given
with ``--pool``, else the first window:

- **volume**: predictions in the window;
- **estimated performance** before any outcome (:mod:`.estimate`): expected AUROC, event rate and calibration error
  from the probabilities, with intervals; calibrated on ``--calibration`` (predictions with known outcomes, e.g.
  ``icl predict`` on the validation split), else on the first window whose outcomes are complete, else taking
  the model's probabilities as calibrated (the report says which);
- **input drift** (:mod:`.drift`): mean age, share of women, events, history length; the normalised Wasserstein
  distance of age, events and history length, and of the predicted probabilities (against ``--calibration``'s
  probabilities, else the first window's);
- **code mix**: per-code share shifts (Benjamini-Hochberg adjusted), the share of codes the pool never had, the
  Jensen-Shannon distance of events per vocabulary, and a domain classifier's AUROC over all inputs together;
- **retrieval**: the queries' similarity to their demos against the pool's own patients' (in reference standard
  deviations), and the share of positive outcomes among the demos shown (the vote the model follows) against
  the pool's own;
- **outcomes**: of the window's patients with an outcome reported: the observed rate against their mean
  probability (calibration in the large), calibration slope and intercept, AUROC, and the AUROC gap between
  groups (sex, age band, group attributes; fairlearn, with a bootstrap interval), once at least
  ``min_outcomes`` have arrived;
- **alerts**: each quantity against its threshold (:class:`AlertSettings`, a TOML file with ``--alerts``).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.files import os_error
from icl_toolkit.data.cohort import Patient
from icl_toolkit.evaluation.monitor.drift import (
    code_mix,
    domain_classifier_auroc,
    numeric_drift,
    shift_in_sd,
    vocabulary_distance,
)
from icl_toolkit.evaluation.monitor.estimate import estimate_performance, fit_calibrator
from icl_toolkit.evaluation.monitor.log import FEEDBACK, PREDICTIONS, REFERENCE, read_log
from icl_toolkit.evaluation.monitor.reference import pool_reference

__all__ = ["AlertSettings", "parse_window", "monitor_report", "write_monitor_page", "INPUTS"]

INPUTS = ("age", "events", "history_days")
"""The numeric inputs whose distribution is compared with the reference."""


class AlertSettings(BaseModel):
    """Alert thresholds of ``icl monitor`` (a TOML file with these keys; unset keys keep their defaults)."""

    model_config = ConfigDict(extra="forbid")

    input_drift_max: float = Field(0.1, gt=0)
    """Alert when an input's Wasserstein distance to the reference, in reference standard deviations, is above
    this (Evidently's default threshold for this distance)."""
    prediction_drift_max: float = Field(0.1, gt=0)
    """Alert when the predicted probabilities' Wasserstein distance to the reference predictions, in their standard
    deviations, is above this."""
    drift_alpha: float = Field(0.001, gt=0, lt=1)
    """An input or prediction drift alerts only when the Kolmogorov-Smirnov test's p-value is below this too (a
    small window is often 0.1 SD off by chance)."""
    code_alpha: float = Field(0.01, gt=0, lt=1)
    """A code's share shift counts when its Benjamini-Hochberg adjusted p-value is below this ..."""
    code_ratio_min: float = Field(1.5, gt=1)
    """... and its share changed by at least this factor either way."""
    shifted_codes_max: int = Field(0, ge=0)
    """Alert when more codes than this have shifted."""
    unseen_codes_max: float = Field(0.02, ge=0, le=1)
    """Alert when more than this share of the window's distinct codes per patient are codes no pool patient has."""
    vocabulary_max: float = Field(0.1, gt=0, le=1)
    """Alert when the Jensen-Shannon distance (base 2) of events per vocabulary is above this."""
    domain_auroc_max: float = Field(0.65, gt=0.5, le=1)
    """Alert when the domain classifier tells the window from the reference with a cross-validated AUROC above
    this (0.5: indistinguishable)."""
    similarity_drop_max: float = Field(0.5, gt=0)
    """Alert when the queries' mean similarity to their demos is more than this many standard deviations below the
    pool's own patients' (the pool stops resembling the patients asked about)."""
    demo_vote_shift_max: float = Field(0.1, gt=0, le=1)
    """Alert when the mean share of positive outcomes among the demos shown moves more than this from the pool's
    own patients' (the vote the model follows has changed)."""
    calibration_max: float = Field(0.05, gt=0)
    """Alert when |mean probability - observed rate| among patients with outcomes is above this."""
    prevalence_shift_max: float = Field(0.05, gt=0)
    """Alert when |observed rate - reference prevalence| is above this (needs a reference prevalence)."""
    auroc_min: float = Field(0.6, ge=0, le=1)
    """Alert when the AUROC among patients with outcomes, or the estimated AUROC before them, is below this."""
    gap_max: float = Field(0.1, gt=0)
    """Alert when the AUROC gap between the groups of a grouping is above this with confidence: the lower end
    of its bootstrap 95% interval is above it (a point gap in a window of a few hundred outcomes is mostly noise:
    even the true risk shows 0.1-0.2 between age bands)."""
    gap_resamples: int = Field(100, ge=10)
    """Bootstrap resamples of the AUROC gap interval (fairlearn)."""
    gap_max_rows: int = Field(2000, ge=100)
    """The AUROC gaps of a window with more outcomes than this are computed on a seeded sample of this many (the
    bootstrap's cost grows with the window; 2,000 outcomes still bound a gap of 0.1 well)."""
    estimate_resamples: int = Field(200, ge=20)
    """Outcome draws behind the estimated AUROC and event rate intervals."""
    complete_outcomes: float = Field(0.9, gt=0, le=1)
    """Without ``--calibration``, the calibrator is fit on the first window with at least this share of its
    patients' outcomes reported."""
    min_outcomes: int = Field(30, ge=1)
    """Outcome-based checks run only on windows with at least this many outcomes (and both classes); estimates and
    drift tests only on windows with at least this many predictions."""
    min_group_outcomes: int = Field(10, ge=1)
    """A group enters the AUROC gap only with at least this many outcomes."""
    min_volume: int = Field(0, ge=0)
    """Alert when a window has fewer predictions than this (0: never)."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_window(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``2w``, ``90m`` or ``45s`` as a duration."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--window expects a positive duration such as 30d, 12h, 2w or 90m. Got {text!r}.")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _ts(record: dict[str, Any]) -> dt.datetime:
    t = dt.datetime.fromisoformat(record["ts"])
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class Reference:
    """What each window is compared with."""

    name: str
    rows: list[dict[str, Any]]
    code_patients: dict[str, int]
    prevalence: float | None = None
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    predictions: np.ndarray | None = None
    predictions_name: str = "first window"

    @classmethod
    def from_summary(cls, summary: dict[str, Any], name: str) -> Reference:
        return cls(
            name=name,
            rows=list(summary.get("rows", [])),
            code_patients=dict(summary.get("code_patients", {})),
            prevalence=summary.get("prevalence"),
            neighbours=list(summary.get("neighbours", [])),
        )

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], name: str) -> Reference:
        return cls(name=name, rows=rows, code_patients=dict(Counter(c for r in rows for c in r.get("codes") or ())))

    @cached_property
    def vocab(self) -> Counter[str]:
        """Events per vocabulary over the reference rows (computed once, read by every window)."""
        total: Counter[str] = Counter()
        for r in self.rows:
            total.update(r.get("vocab") or {})
        return total

    @cached_property
    def inputs(self) -> dict[str, list[float]]:
        """Each numeric input's values over the reference rows (computed once, read by every window)."""
        return {k: [r[k] for r in self.rows] for k in INPUTS}


def read_calibration(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and outcomes of a predictions file (``icl predict``'s output on patients with known outcomes).

    Raises:
        ConfigError: the file cannot be read, a line is not a prediction, or fewer than 30 records have an outcome
            (or all have the same one); the file and line are named.
    """
    p, y = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise os_error(exc, Path(path), "reading the calibration predictions") from None
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            prob = float(rec["probability"])
            label = None if rec.get("label") is None else int(rec["label"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{path}, line {no}: not a prediction record (expected a JSON object with `probability` and "
                "`label` 0 or 1, as `icl predict` writes)."
            ) from None
        if label is not None:
            p.append(prob)
            y.append(label)
    if len(y) < 30 or len(set(y)) < 2:
        raise ConfigError(
            f"{path}: {len(y)} predictions with a known outcome ({sum(y)} positive); the calibrator needs at least "
            "30 with both outcomes (run `icl predict` on the validation split, whose patients have labels)."
        )
    return np.array(p), np.array(y)


def _outcome_metrics(rows: list[dict[str, Any]], settings: AlertSettings) -> dict[str, Any]:
    from icl_toolkit.evaluation.fairness import auroc_or_nan, calibration_intercept, calibration_slope, subgroup_frame

    y = np.array([r["outcome"] for r in rows], dtype=int)
    p = np.array([r["probability"] for r in rows], dtype=float)
    out: dict[str, Any] = {
        "outcomes": len(rows),
        "observed_rate": float(y.mean()) if len(y) else None,
        "mean_probability_with_outcome": float(p.mean()) if len(p) else None,
        "calibration_error": float(p.mean() - y.mean()) if len(y) else None,
        "calibration_slope": None,
        "calibration_intercept": None,
        "auroc": None,
        "gaps": {},
    }
    if len(y) < settings.min_outcomes or len(set(y.tolist())) < 2:
        return out
    out["auroc"] = auroc_or_nan(y, p)
    slope, intercept = calibration_slope(y, p), calibration_intercept(y, p)
    out["calibration_slope"] = None if math.isnan(slope) else slope
    out["calibration_intercept"] = None if math.isnan(intercept) else intercept
    if len(rows) > settings.gap_max_rows:  # fairlearn's bootstrap costs ~40 ms a resample at 8,000 patients
        sub = np.sort(np.random.default_rng(0).permutation(len(rows))[: settings.gap_max_rows])
        rows, y, p = [rows[i] for i in sub], y[sub], p[sub]
    out["gap_outcomes"] = len(rows)
    groupings: dict[str, list[str]] = {"sex": [r["sex"] for r in rows], "age_band": [r["age_band"] for r in rows]}
    for attr in sorted({a for r in rows for a in r.get("groups", {})}):
        groupings[attr] = [r.get("groups", {}).get(attr, "unknown") for r in rows]
    for name, values in groupings.items():
        v = np.asarray(values, dtype=object)
        big = [
            g
            for g in set(values)
            if (v == g).sum() >= settings.min_group_outcomes and len(set(y[v == g].tolist())) == 2
        ]
        if len(big) < 2:
            continue
        keep = np.isin(v, big)
        # the AUROC gap alone is read here: only AUROC is resampled
        frame = subgroup_frame(y[keep], p[keep], v[keep], n_boot=settings.gap_resamples, metrics=["auroc"])
        out["gaps"][name] = float(frame.difference()["auroc"])
        out.setdefault("gaps_lo", {})[name] = float(frame.difference_ci()[0]["auroc"])
    return out


def _reference(folder: Path, pool: list[Patient] | None, first: list[dict[str, Any]]) -> Reference:
    if pool:
        return Reference.from_summary(pool_reference(pool), f"demonstration pool ({len(pool)} patients, --pool)")
    path = folder / REFERENCE
    if path.is_file():
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path}: unreadable ({exc}); delete it to compare with the first window, or restart "
                "`icl serve` to write it again."
            ) from None
        return Reference.from_summary(summary, f"demonstration pool ({summary.get('patients', 0)} patients)")
    return Reference.from_rows(first, "first window")


def _calibrator(
    calibration: str | os.PathLike[str] | None,
    calibration_set: tuple[np.ndarray, np.ndarray] | None,
    by_window: dict[int, list[dict[str, Any]]],
    outcomes: dict[str, dict[str, Any]],
    settings: AlertSettings,
) -> tuple[Callable[[np.ndarray], np.ndarray] | None, dict[str, Any]]:
    if calibration_set is not None:
        p, y = calibration_set
        return fit_calibrator(p, y), {"source": str(calibration), "patients": len(y), "prevalence": float(y.mean())}
    for w in sorted(by_window):
        latest = {r["id"]: r for r in by_window[w]}
        joined = [(r["probability"], outcomes[i]["outcome"]) for i, r in latest.items() if i in outcomes]
        ys = {o for _, o in joined}
        if len(joined) >= max(settings.min_outcomes, settings.complete_outcomes * len(latest)) and len(ys) == 2:
            p, y = np.array([j[0] for j in joined]), np.array([j[1] for j in joined])
            return fit_calibrator(p, y), {"source": f"window {w} (its outcomes complete)", "patients": len(y)}
    return None, {"source": "none: the model's probabilities are taken as calibrated", "patients": 0}


def _drift(row: dict[str, Any], rows: list[dict[str, Any]], ref: Reference, settings: AlertSettings) -> None:
    """The window's drift tests against the reference, into ``row``."""
    for k in INPUTS:
        row[f"drift_{k}"], row[f"drift_{k}_p"] = numeric_drift(ref.inputs[k], [r[k] for r in rows])
    if ref.predictions is not None:
        row["prediction_drift"], row["prediction_drift_p"] = numeric_drift(
            ref.predictions, [r["probability"] for r in rows]
        )
    if ref.code_patients:
        counts = Counter(c for r in rows for c in r.get("codes") or ())
        row["code_mix"] = code_mix(
            ref.code_patients, counts, alpha=settings.code_alpha, min_ratio=settings.code_ratio_min
        )
        row["shifted_codes"] = row["code_mix"]["shifted"]
    logged = [r for r in rows if r.get("unseen_codes") is not None]
    distinct = sum(r.get("distinct_codes") or 0 for r in logged)
    row["unseen_share"] = sum(r["unseen_codes"] for r in logged) / distinct if distinct else None
    vocab: Counter[str] = Counter()
    for r in rows:
        vocab.update(r.get("vocab") or {})
    row["vocabulary_distance"] = vocabulary_distance(ref.vocab, vocab)
    if all("vocab" in r for r in rows):  # logged since the code-mix signals were added
        row["domain_auroc"] = domain_classifier_auroc(ref.rows, rows)
    sims = [r["demo_similarity"] for r in rows if r.get("demo_similarity") is not None]
    votes = [r["demo_vote"] for r in rows if r.get("demo_vote") is not None]
    ref_sims = [n["demo_similarity"] for n in ref.neighbours if n.get("demo_similarity") is not None]
    ref_votes = [n["demo_vote"] for n in ref.neighbours if n.get("demo_vote") is not None]
    row["similarity_drop"] = shift_in_sd(ref_sims, sims) if ref_sims else None
    row["demo_vote_shift"] = float(np.mean(votes) - np.mean(ref_votes)) if votes and ref_votes else None


def monitor_report(
    folder: str | os.PathLike[str],
    window: dt.timedelta,
    *,
    pool: list[Patient] | None = None,
    settings: AlertSettings | None = None,
    calibration: str | os.PathLike[str] | None = None,
    as_of: dt.datetime | None = None,
) -> dict[str, Any]:
    """Windows of the monitor log in ``folder`` with their alerts (JSON-ready).

    Args:
        folder: the monitor folder of ``icl serve --monitor-dir``.
        window: the window length.
        pool: the reference population (default: the folder's ``reference.json``, else the first window).
        settings: alert thresholds.
        calibration: predictions with known outcomes to fit the estimate's calibrator on (and the reference of
            prediction drift); default: the first outcome-complete window, else none.
        as_of: report what the log held at this time (records stamped later are left out).

    Raises:
        ConfigError: the folder has no prediction log; an unreadable reference or calibration file.
    """
    settings = settings or AlertSettings()
    folder = Path(folder)
    preds, bad_p = read_log(folder / PREDICTIONS)
    feedback, bad_f = read_log(folder / FEEDBACK)
    stamped = sorted(((_ts(r), r) for r in preds), key=lambda tr: tr[0])  # each time stamp parsed once
    if as_of is not None:
        stamped = [(t, r) for t, r in stamped if t <= as_of]
        feedback = [r for r in feedback if _ts(r) <= as_of]
    if not stamped:
        raise ConfigError(
            f"{folder / PREDICTIONS}: no predictions logged yet (start `icl serve --monitor-dir "
            f"{folder}` and send requests)."
        )
    preds = [r for _, r in stamped]
    outcomes = {r["id"]: r for r in feedback}
    start = stamped[0][0]
    by_window: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t, r in stamped:
        by_window[int((t - start) / window)].append(r)
    ref = _reference(folder, pool, by_window[min(by_window)])
    calibration_set = read_calibration(calibration) if calibration is not None else None
    calibrator, calibrated_on = _calibrator(calibration, calibration_set, by_window, outcomes, settings)
    if calibration_set is not None:  # the reference of prediction drift: the calibration predictions ...
        ref.predictions = calibration_set[0]
        ref.predictions_name = f"calibration predictions ({len(calibration_set[0])})"
    else:  # ... else the first window's
        ref.predictions = np.array([r["probability"] for r in by_window[min(by_window)]])
    windows, alerts = [], []
    for w in range(max(by_window) + 1):
        rows = by_window.get(w, [])
        w_start = start + w * window
        row: dict[str, Any] = {
            "window": w,
            "start": w_start.isoformat(timespec="seconds"),
            "end": (w_start + window).isoformat(timespec="seconds"),
            "volume": len(rows),
        }
        if rows:
            probs = np.array([r["probability"] for r in rows])
            row.update(
                mean_age=float(np.mean([r["age"] for r in rows])),
                female_share=float(np.mean([r["sex"] == "F" for r in rows])),
                mean_events=float(np.mean([r["events"] for r in rows])),
                mean_history_years=float(np.mean([r["history_days"] for r in rows])) / 365.25,
                mean_probability=float(probs.mean()),
            )
            for key in ("demo_vote", "demo_similarity"):  # logged since the retrieval signals were added
                values = [r[key] for r in rows if r.get(key) is not None]
                row[f"mean_{key}"] = float(np.mean(values)) if values else None
            if len(rows) >= settings.min_outcomes:
                row.update(estimate_performance(probs, calibrator, resamples=settings.estimate_resamples, seed=w))
                _drift(row, rows, ref, settings)
            latest = {r["id"]: r for r in rows}  # a patient predicted twice in a window counts once (latest)
            joined = [r | {"outcome": outcomes[i]["outcome"]} for i, r in latest.items() if i in outcomes]
            row.update(_outcome_metrics(joined, settings))
        windows.append(row)
        alerts += _check(row, settings, ref.prevalence)
    return {
        "reference": ref.name,
        "reference_prevalence": ref.prevalence,
        "reference_predictions": ref.predictions_name,
        "reference_neighbours": len(ref.neighbours),
        "calibrated_on": calibrated_on,
        "window_seconds": window.total_seconds(),
        "predictions": len(preds),
        "feedback": len(feedback),
        "unreadable_lines": bad_p + bad_f,
        "settings": settings.model_dump(),
        "windows": windows,
        "alerts": alerts,
    }


def _check(row: dict[str, Any], s: AlertSettings, ref_prev: float | None) -> list[dict[str, Any]]:
    out = []

    def alert(metric: str, value: float, threshold: float, message: str) -> None:
        out.append(
            {
                "window": row["window"],
                "start": row["start"],
                "metric": metric,
                "value": round(value, 4),
                "threshold": threshold,
                "message": message,
            }
        )

    def above(key: str, threshold: float) -> float | None:
        v = row.get(key)
        return v if v is not None and not (isinstance(v, float) and math.isnan(v)) and v > threshold else None

    def drifted(key: str, threshold: float) -> float | None:
        p = row.get(f"{key}_p")
        return above(key, threshold) if p is not None and p < s.drift_alpha else None

    if s.min_volume and row["volume"] < s.min_volume:
        alert("volume", row["volume"], s.min_volume, f"{row['volume']} predictions, fewer than {s.min_volume}")
    est = row.get("estimated_auroc")
    if est is not None and est < s.auroc_min:
        alert("estimated_auroc", est, s.auroc_min, f"estimated AUROC {est:.3f} < {s.auroc_min} (before outcomes)")
    for k in INPUTS:
        if (v := drifted(f"drift_{k}", s.input_drift_max)) is not None:
            alert(f"input_{k}", v, s.input_drift_max, f"input drift: {k} moved {v:.3f} SD (Wasserstein)")
    if (v := drifted("prediction_drift", s.prediction_drift_max)) is not None:
        alert("prediction_drift", v, s.prediction_drift_max, f"prediction drift: probabilities moved {v:.3f} SD")
    if (v := above("shifted_codes", s.shifted_codes_max)) is not None:
        top = ", ".join(
            f"{c['code']} {c['reference_share']:.4f}->{c['window_share']:.4f}" for c in row["code_mix"]["top"][:3]
        )
        alert(
            "code_mix",
            v,
            s.shifted_codes_max,
            f"code mix: {int(v)} of {row['code_mix']['tested']} codes shifted ({top})",
        )
    if (v := above("unseen_share", s.unseen_codes_max)) is not None:
        alert("unseen_codes", v, s.unseen_codes_max, f"unseen codes: {v:.1%} of distinct codes never in the pool")
    if (v := above("vocabulary_distance", s.vocabulary_max)) is not None:
        alert("vocabulary", v, s.vocabulary_max, f"vocabulary mix moved: Jensen-Shannon distance {v:.3f}")
    if (v := above("domain_auroc", s.domain_auroc_max)) is not None:
        alert(
            "multivariate",
            v,
            s.domain_auroc_max,
            f"multivariate drift: a classifier tells the window from the reference (AUROC {v:.3f})",
        )
    if (v := above("similarity_drop", s.similarity_drop_max)) is not None:
        alert(
            "neighbour_similarity",
            v,
            s.similarity_drop_max,
            f"the pool stops resembling the patients: demo similarity {v:.2f} SD below the pool's own patients'",
        )
    shift = row.get("demo_vote_shift")
    if shift is not None and abs(shift) > s.demo_vote_shift_max:
        alert("demo_vote", shift, s.demo_vote_shift_max, f"the demos' vote moved {shift:+.3f} from the pool's own")
    if row.get("outcomes", 0) >= s.min_outcomes:
        ce, obs = row["calibration_error"], row["observed_rate"]
        if abs(ce) > s.calibration_max:
            alert(
                "calibration_error",
                ce,
                s.calibration_max,
                f"miscalibrated: mean probability {row['mean_probability_with_outcome']:.3f} against observed "
                f"{obs:.3f} over {row['outcomes']} outcomes",
            )
        if ref_prev is not None and abs(obs - ref_prev) > s.prevalence_shift_max:
            alert(
                "prevalence_shift",
                obs - ref_prev,
                s.prevalence_shift_max,
                f"prevalence shift: observed {obs:.3f} against {ref_prev:.3f} in the reference",
            )
        if row.get("auroc") is not None and row["auroc"] < s.auroc_min:
            alert("auroc", row["auroc"], s.auroc_min, f"AUROC {row['auroc']:.3f} < {s.auroc_min}")
        for g, gap in row.get("gaps", {}).items():
            lo = row["gaps_lo"][g]
            if lo > s.gap_max:
                alert(f"gap_{g}", gap, s.gap_max, f"AUROC gap by {g} {gap:.3f} (95% CI from {lo:.3f}) > {s.gap_max}")
    return out


# --------------------------------------------------------------------------- outputs


def _series(ws: list[dict[str, Any]], key: str) -> list[float]:
    return [np.nan if w.get(key) is None else float(w[key]) for w in ws]


def _plot(report: dict[str, Any], path: Path) -> None:
    """One panel per signal over windows, each with its alert threshold (red dashes) and alerted windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = report["windows"]
    x = [w["window"] for w in ws]
    s = report["settings"]
    fig, axes = plt.subplots(4, 3, figsize=(14, 13))
    ax = iter(axes.flat)

    def panel(title: str, lines: dict[str, str], threshold: float | None = None, **kw: Any) -> Any:
        a = next(ax)
        for label, key in lines.items():
            a.plot(x, _series(ws, key), marker="o", label=label)
        if threshold is not None:
            a.axhline(threshold, color="red", linestyle="--", linewidth=1, label="alert")
        a.set(title=title, xlabel="window", **kw)
        return a

    a = next(ax)
    a.bar(x, [w["volume"] for w in ws], color="tab:blue")
    a.set(title="volume (predictions per window)", xlabel="window")
    a = panel(
        "AUROC: estimated (band: 95% interval) and realized",
        {"estimated": "estimated_auroc", "realized": "auroc"},
        s["auroc_min"],
        ylim=(0.3, 1),
    )
    a.fill_between(x, _series(ws, "estimated_auroc_lo"), _series(ws, "estimated_auroc_hi"), alpha=0.2)
    a = panel("event rate: estimated and observed", {"estimated": "estimated_rate", "observed": "observed_rate"})
    a.fill_between(x, _series(ws, "estimated_rate_lo"), _series(ws, "estimated_rate_hi"), alpha=0.2)
    panel(
        "calibration error (mean p - rate)",
        {"estimated": "estimated_calibration_error", "observed": "calibration_error"},
    )
    panel("input drift (Wasserstein, SD)", {k: f"drift_{k}" for k in INPUTS}, s["input_drift_max"])
    panel("prediction drift (Wasserstein, SD)", {"probabilities": "prediction_drift"}, s["prediction_drift_max"])
    panel("codes with a shifted share (BH-adjusted)", {"codes": "shifted_codes"}, s["shifted_codes_max"] + 0.5)
    panel("share of codes never in the pool", {"unseen": "unseen_share"}, s["unseen_codes_max"])
    panel("vocabulary mix (Jensen-Shannon distance)", {"vocabularies": "vocabulary_distance"}, s["vocabulary_max"])
    panel("multivariate: domain classifier AUROC", {"classifier": "domain_auroc"}, s["domain_auroc_max"])
    panel(
        "demo similarity: drop below the pool's own (SD)",
        {"drop": "similarity_drop"},
        s["similarity_drop_max"],
    )
    a = panel("demos' vote: shift from the pool's own", {"shift": "demo_vote_shift"}, s["demo_vote_shift_max"])
    a.axhline(-s["demo_vote_shift_max"], color="red", linestyle="--", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    fig.suptitle(f"against the {report['reference']}; predictions against {report['reference_predictions']}")
    for a in axes.flat:
        if len(x) <= 12:
            a.set_xticks(x)
        else:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    for w in sorted({alert["window"] for alert in report["alerts"]}):  # each alerted window shaded once
        for a in axes.flat:
            a.axvspan(w - 0.4, w + 0.4, color="red", alpha=0.06)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


TABLE_COLUMNS = (
    "start",
    "volume",
    "mean_age",
    "female_share",
    "mean_events",
    "estimated_auroc",
    "estimated_auroc_lo",
    "estimated_auroc_hi",
    "estimated_rate",
    "drift_age",
    "drift_events",
    "drift_history_days",
    "prediction_drift",
    "shifted_codes",
    "unseen_share",
    "vocabulary_distance",
    "domain_auroc",
    "mean_demo_similarity",
    "similarity_drop",
    "mean_demo_vote",
    "demo_vote_shift",
    "outcomes",
    "observed_rate",
    "calibration_error",
    "auroc",
)


def write_monitor_page(report: dict[str, Any], out: Path) -> Path:
    """``monitor.png`` and ``index.html`` (the plots, the windows table and the alerts) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    _plot(report, out / "monitor.png")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(w.get(c)))}</td>" for c in TABLE_COLUMNS) + "</tr>"
        for w in report["windows"]
    )
    alerts = (
        "".join(
            f"<li>window {a['window']} ({html.escape(a['start'])}): {html.escape(a['message'])}</li>"
            for a in report["alerts"]
        )
        or "<li>none</li>"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>icl monitor</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}</style></head><body>
<h1>Served predictor: monitoring</h1>
<p>{report["predictions"]} predictions, {report["feedback"]} outcomes reported; windows of
{report["window_seconds"] / 86400:g} days; reference: {html.escape(report["reference"])}; estimates calibrated on
{html.escape(report["calibrated_on"]["source"])}; generated
{dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}.</p>
<h2>Alerts</h2><ul>{alerts}</ul>
<img src="monitor.png" alt="monitoring plots" style="max-width:100%">
<h2>Windows</h2><table><tr>{head}</tr>{body}</table>
</body></html>"""
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
