"""``icl monitor``: a served predictor's log, window by window, against alert thresholds.

Per window (``--window 30d``; windows start at the first logged prediction):

- **volume**: predictions in the window;
- **input mix**: mean age, share of women, events per patient, history length; the population stability index
  (PSI) of age, events and history length against the reference (the demonstration pool when given, else the
  first window): ``sum (a - e) ln(a / e)`` over the reference's deciles; 0.1-0.2 is a moderate shift, above
  0.2 a large one (the usual rule of thumb);
- **retrieval**: the mean share of positive outcomes among the demos shown (the vote the model follows) and their
  mean similarity to the query (each logged per prediction; windows of a log written before have none);
- **outcomes**: of the window's patients with an outcome reported: the observed rate against their mean
  probability (calibration in the large), calibration slope and intercept, AUROC, and the AUROC gap between
  groups (sex, age band, group attributes; fairlearn, with a bootstrap interval), once at least
  ``min_outcomes`` have arrived;
- **alerts**: each quantity against its threshold (:class:`AlertSettings`, a TOML file with ``--alerts``).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import Patient
from icl_toolkit.evaluation.monitor.log import FEEDBACK, PREDICTIONS, input_features, read_log

__all__ = ["AlertSettings", "parse_window", "psi", "monitor_report", "write_monitor_page", "INPUTS"]

INPUTS = ("age", "events", "history_days")
"""The numeric inputs whose distribution is compared with the reference (PSI)."""


class AlertSettings(BaseModel):
    """Alert thresholds of ``icl monitor`` (a TOML file with these keys; unset keys keep their defaults)."""

    model_config = ConfigDict(extra="forbid")

    psi_max: float = Field(0.2, gt=0)
    """Alert when an input's PSI against the reference is above this."""
    calibration_max: float = Field(0.05, gt=0)
    """Alert when |mean probability - observed rate| among patients with outcomes is above this."""
    prevalence_shift_max: float = Field(0.05, gt=0)
    """Alert when |observed rate - reference prevalence| is above this (needs a reference prevalence)."""
    auroc_min: float = Field(0.6, ge=0, le=1)
    """Alert when the AUROC among patients with outcomes is below this."""
    gap_max: float = Field(0.1, gt=0)
    """Alert when the AUROC gap between the groups of a grouping is above this with confidence: the lower end
    of its bootstrap 95% interval is above it (a point gap in a window of a few hundred outcomes is mostly noise:
    even the true risk shows 0.1-0.2 between age bands)."""
    gap_resamples: int = Field(100, ge=10)
    """Bootstrap resamples of the AUROC gap interval (fairlearn)."""
    min_outcomes: int = Field(30, ge=1)
    """Outcome-based checks run only on windows with at least this many outcomes (and both classes)."""
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


def psi(reference: Any, current: Any, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` over the reference's quantile bins
    (NaN when either is empty)."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if not len(ref) or not len(cur):
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    a = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _inputs_of(patients: list[Patient]) -> dict[str, list[float]]:
    rows = [input_features(p) for p in patients]
    return {k: [r[k] for r in rows] for k in INPUTS}


def _ts(record: dict[str, Any]) -> dt.datetime:
    t = dt.datetime.fromisoformat(record["ts"])
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


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


def monitor_report(
    folder: str | os.PathLike[str],
    window: dt.timedelta,
    *,
    pool: list[Patient] | None = None,
    settings: AlertSettings | None = None,
) -> dict[str, Any]:
    """Windows of the monitor log in ``folder`` with their alerts (JSON-ready).

    Raises:
        ConfigError: the folder has no prediction log.
    """
    settings = settings or AlertSettings()
    folder = Path(folder)
    preds, bad_p = read_log(folder / PREDICTIONS)
    feedback, bad_f = read_log(folder / FEEDBACK)
    if not preds:
        raise ConfigError(
            f"{folder / PREDICTIONS}: no predictions logged yet (start `icl serve --monitor-dir "
            f"{folder}` and send requests)."
        )
    outcomes = {r["id"]: r for r in feedback}
    preds.sort(key=_ts)
    start = _ts(preds[0])
    by_window: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in preds:
        by_window[int((_ts(r) - start) / window)].append(r)
    if pool:
        ref_inputs = _inputs_of(pool)
        labelled = [p.label for p in pool if p.label is not None]
        ref_prev = float(np.mean(labelled)) if labelled else None
        ref_name = f"demonstration pool ({len(pool)} patients)"
    else:
        first = by_window[min(by_window)]
        ref_inputs = {k: [r[k] for r in first] for k in INPUTS}
        ref_prev, ref_name = None, "first window"
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
            row.update(
                mean_age=float(np.mean([r["age"] for r in rows])),
                female_share=float(np.mean([r["sex"] == "F" for r in rows])),
                mean_events=float(np.mean([r["events"] for r in rows])),
                mean_history_years=float(np.mean([r["history_days"] for r in rows])) / 365.25,
                mean_probability=float(np.mean([r["probability"] for r in rows])),
            )
            for key in ("demo_vote", "demo_similarity"):  # logged since the retrieval signals were added
                values = [r[key] for r in rows if r.get(key) is not None]
                row[f"mean_{key}"] = float(np.mean(values)) if values else None
            for k in INPUTS:
                row[f"psi_{k}"] = psi(ref_inputs[k], [r[k] for r in rows])
            latest = {r["id"]: r for r in rows}  # a patient predicted twice in a window counts once (latest)
            joined = [r | {"outcome": outcomes[i]["outcome"]} for i, r in latest.items() if i in outcomes]
            row.update(_outcome_metrics(joined, settings))
        windows.append(row)
        alerts += _check(row, settings, ref_prev)
    return {
        "reference": ref_name,
        "reference_prevalence": ref_prev,
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

    if s.min_volume and row["volume"] < s.min_volume:
        alert("volume", row["volume"], s.min_volume, f"{row['volume']} predictions, fewer than {s.min_volume}")
    for k in INPUTS:
        v = row.get(f"psi_{k}")
        if v is not None and v > s.psi_max:
            alert(f"psi_{k}", v, s.psi_max, f"input drift: {k} PSI {v:.3f} > {s.psi_max}")
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


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = report["windows"]
    x = [w["window"] for w in ws]
    s = report["settings"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    axes[0, 0].bar(x, [w["volume"] for w in ws], color="tab:blue")
    axes[0, 0].set(title="volume (predictions per window)", xlabel="window")
    for k in INPUTS:
        axes[0, 1].plot(x, [w.get(f"psi_{k}", np.nan) for w in ws], marker="o", label=k)
    axes[0, 1].axhline(s["psi_max"], color="red", linestyle="--", linewidth=1, label="alert")
    axes[0, 1].set(title=f"input drift: PSI against the {report['reference']}", xlabel="window")
    axes[1, 0].plot(x, [w.get("mean_probability", np.nan) for w in ws], marker="o", label="mean probability (all)")
    axes[1, 0].plot(
        x,
        [w.get("mean_probability_with_outcome") or np.nan for w in ws],
        marker="s",
        label="mean probability (with outcome)",
    )
    axes[1, 0].plot(
        x,
        [w.get("observed_rate") if w.get("observed_rate") is not None else np.nan for w in ws],
        marker="^",
        label="observed rate",
    )
    axes[1, 0].set(title="calibration in the large", xlabel="window")
    axes[1, 1].plot(x, [w.get("auroc") or np.nan for w in ws], marker="o", label="AUROC")
    groupings = sorted({g for w in ws for g in w.get("gaps", {})})
    for g in groupings:
        axes[1, 1].plot(
            x, [w.get("gaps", {}).get(g, np.nan) for w in ws], marker=".", linestyle=":", label=f"AUROC gap by {g}"
        )
    axes[1, 1].axhline(s["auroc_min"], color="red", linestyle="--", linewidth=1, label="AUROC alert")
    axes[1, 1].set(title=f"with at least {s['min_outcomes']} outcomes", xlabel="window", ylim=(0, 1))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for a in report["alerts"]:
        for ax in axes.flat:
            ax.axvspan(a["window"] - 0.4, a["window"] + 0.4, color="red", alpha=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
    "psi_age",
    "psi_events",
    "psi_history_days",
    "mean_probability",
    "mean_demo_vote",
    "mean_demo_similarity",
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
{report["window_seconds"] / 86400:g} days; reference: {html.escape(report["reference"])}; generated
{dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}.</p>
<h2>Alerts</h2><ul>{alerts}</ul>
<img src="monitor.png" alt="monitoring plots" style="max-width:100%">
<h2>Windows</h2><table><tr>{head}</tr>{body}</table>
</body></html>"""
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
