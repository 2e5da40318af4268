"""Outputs of a comparison: results table (CSV, Markdown), plots and a report with a model card per arm."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icl_toolkit.core.artifacts import write_csv_rows
from icl_toolkit.evaluation.card import ModelCard
from icl_toolkit.evaluation.compare.stats import METRICS, Entry
from icl_toolkit.evaluation.fairness import (
    FairnessReport,
    gaps_markdown,
    plot_fairness,
    subgroups_markdown,
    write_fairness_tables,
)

__all__ = ["write_tables", "plot_roc", "plot_auroc_vs_k", "plot_calibration", "plot_fairness", "write_report"]

_LABELS = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "ece": "ECE", "f1": "F1"}


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _short(digest: str) -> str:
    """``sha256:0123456789ab`` (the first 12 hex digits)."""
    algo, _, hexd = digest.partition(":")
    return f"{algo}:{hexd[:12]}" if hexd else digest[:12]


def _p(p: float | None) -> str:
    if p is None:
        return "ref"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ci(row: dict[str, Any], m: str) -> str:
    return f"{_fmt(row[m])} ({_fmt(row[m + '_lo'])}-{_fmt(row[m + '_hi'])})"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table: metrics with 95% CIs, AUROC difference to the reference, DeLong p."""
    head = ["arm", *(f"{_LABELS[m]} (95% CI)" for m in METRICS), "ΔAUROC vs ref (95% CI)", "DeLong p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = r["name"] if r["kind"] == "arm" else f"*{r['name']}* (baseline)"
        delta = (
            "-" if r["p_value"] is None else f"{r['delta_auroc']:+.3f} ({r['delta_lo']:+.3f} to {r['delta_hi']:+.3f})"
        )
        lines.append("| " + " | ".join([name, *(_ci(r, m) for m in METRICS), delta, _p(r["p_value"])]) + " |")
    return "\n".join(lines) + "\n"


def write_tables(
    out: Path, rows: Sequence[dict[str, Any]], fairness: FairnessReport, contrasts: Sequence[dict[str, Any]] = ()
) -> None:
    """``results.csv``, ``results.md`` (with the contrasts under the table), ``subgroups.csv`` and
    ``fairness_gaps.csv`` in ``out``; ``contrasts.csv`` when the config names contrasts."""
    write_csv_rows(out / "results.csv", rows, digits=6)
    text = markdown_table(rows) + (("\n" + contrast_table(contrasts)) if contrasts else "")
    (out / "results.md").write_text(text, encoding="utf-8")
    write_fairness_tables(out, fairness)
    if contrasts:
        write_csv_rows(out / "contrasts.csv", contrasts, digits=6)


def _needed(c: dict[str, Any]) -> str:
    """The test size that detects 0.05; one at or below the size used is reported as already reached (the
    normal approximation it comes from says nothing useful about smaller samples)."""
    need = c["patients_for_0_05"]
    return f"reached ({need:,.0f} would do)" if need <= c["n"] else f"{need:,.0f}"


def contrast_table(contrasts: Sequence[dict[str, Any]]) -> str:
    """The named paired contrasts as a markdown table."""
    lines = [
        "| question | contrast (a vs b) | AUROC a | AUROC b | a - b (95% CI) | DeLong p | detectable at 80% power "
        "| test patients to detect 0.05 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in contrasts:
        lines.append(
            f"| {c.get('question', 'named in the config')} | {c['a']} vs {c['b']} | {c['auroc_a']:.3f} | {c['auroc_b']:.3f} | "
            f"{c['difference']:+.3f} ({c['lo']:+.3f} to {c['hi']:+.3f}) | {c['p_value']:.3g} | "
            f"{c['detectable_80']:.3f} | {_needed(c)} |"
        )
    return (
        "\n".join(lines)
        + "\n"
        + (
            "\nDetectable at 80% power: the smallest true difference this paired test would find (two-sided 5%) "
            "with its observed standard error (2.80 SE); test patients to detect 0.05: the test-set size, at the same "
            "case mix, at which a 0.05 difference would be found with 80% power (SE shrinking as 1/sqrt(n)).\n"
        )
    )


# --------------------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def _style(e: Entry) -> dict[str, Any]:
    return {"linestyle": "--", "linewidth": 1.2} if e.kind == "baseline" else {"linewidth": 1.6}


def plot_roc(path: Path, entries: Sequence[Entry], y: np.ndarray, rows: Sequence[dict[str, Any]]) -> None:
    """ROC curves of every arm and baseline, AUROC in the legend."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    auroc = {r["name"]: r["auroc"] for r in rows}
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    cmap = plt.get_cmap("tab20")
    for i, e in enumerate(entries):
        fpr, tpr, _ = roc_curve(y, e.test)
        ax.plot(fpr, tpr, color=cmap(i % 20), label=f"{e.name} ({auroc[e.name]:.3f})", **_style(e))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    _save(
        fig,
        ax,
        path,
        "false positive rate",
        "true positive rate",
        f"ROC on {len(y)} test patients ({int(y.sum())} cases)",
    )


def plot_auroc_vs_k(path: Path, rows: Sequence[dict[str, Any]]) -> bool:
    """AUROC against k (95% CI bars) per (checkpoint, demos, strategy, mode); k=0 is the same
    checkpoint and mode without demos. Baselines are horizontal lines. False when no arm has demos."""
    arms = [r for r in rows if r["kind"] == "arm"]
    if not any(r["demos"] != "none" for r in arms):
        return False
    plt = _plt()
    zero: dict[tuple[str, ...], dict[str, Any]] = {
        (r["checkpoint"], r["mode"]): r for r in arms if r["demos"] == "none"
    }
    series: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in arms:
        if r["demos"] != "none":
            series[(r["checkpoint"], r["demos"], r["strategy"], r["mode"])].append(r)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    cmap = plt.get_cmap("tab10")
    for i, (key, pts) in enumerate(sorted(series.items())):
        pts = sorted(pts, key=lambda r: r["k"])
        if key[::3] in zero:
            pts = [zero[key[::3]], *pts]
        ks = [r["k"] for r in pts]
        vals = np.array([r["auroc"] for r in pts])
        err = np.array([[v - r["auroc_lo"] for v, r in zip(vals, pts)], [r["auroc_hi"] - v for v, r in zip(vals, pts)]])
        offset = (i - len(series) / 2) * 0.06
        ax.errorbar(
            np.array(ks) + offset,
            vals,
            yerr=err,
            marker="o",
            capsize=3,
            color=cmap(i % 10),
            label=f"{key[0]}, {key[1]} demos, {key[2]}, {key[3]}",
        )
    for j, r in enumerate(x for x in rows if x["kind"] == "baseline"):  # in the legend, not as labels that overlap
        ax.axhline(
            r["auroc"],
            linestyle=":",
            linewidth=1,
            color=plt.get_cmap("Dark2")(j % 8),
            label=f"{r['name']} {r['auroc']:.2f}",
        )
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ks_used = sorted({int(r["k"]) for pts in series.values() for r in pts} | ({0} if zero else set()))
    ax.set_xticks(ks_used)  # whole numbers of demonstrations, not a fractional axis
    _save(
        fig,
        ax,
        path,
        "demonstrations k (0 = none)",
        "AUROC (95% bootstrap CI)",
        "AUROC against the number of demonstrations",
    )
    return True


def plot_calibration(path: Path, entries: Sequence[Entry], y: np.ndarray, n_bins: int = 5) -> None:
    """Reliability curves (quantile bins) of every arm and baseline."""
    from sklearn.calibration import calibration_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6.5))
    cmap = plt.get_cmap("tab20")
    for i, e in enumerate(entries):
        frac, mean = calibration_curve(y, np.clip(e.test, 0, 1), n_bins=n_bins, strategy="quantile")
        ax.plot(mean, frac, marker="o", markersize=3, color=cmap(i % 20), label=e.name, **_style(e))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    _save(
        fig, ax, path, f"mean predicted probability ({n_bins} quantile bins)", "observed share positive", "Calibration"
    )


# --------------------------------------------------------------------------- report


def _default_use(context: dict[str, Any]) -> str:
    task = context.get("task") or {"question": "five-year ADRD onset"}
    return (
        f'research comparison of prompting and fine-tuning for the question "{task["question"]}" from coded '
        "histories. Not a clinical decision tool; not validated on real patients."
    )


NARROW_SPREAD = 0.05
"""A model card notes an entry whose middle 90% of predicted probabilities spans less than this."""


def _model_card(
    r: dict[str, Any], fairness: FairnessReport, info: dict[str, Any], reference: str, context: dict[str, Any]
) -> list[str]:
    lines = [f"### {r['name']}", ""]
    if context.get("task"):
        lines.append(f"- **Task**: `{context['task']['name']}`: {context['task']['question']}")
    ckpt = info.get("checkpoint_meta")
    if r["kind"] == "arm":
        model = f"`{r['checkpoint']}` = `{info.get('model_id', '?')}`"
        if ckpt:
            model += (
                f"; {ckpt['target']} SFT of `{ckpt['base_id']}` ({'LoRA' if ckpt.get('lora') else 'weights'}), "
                f"{ckpt['n_train']} training patients (data hash `{_short(ckpt['train_hash'])}`), "
                f"{ckpt['steps']} steps, train loss {ckpt['first_train_loss']:.3f} -> "
                f"{ckpt['final_train_loss']:.3f}"
            )
        demos = "none" if r["demos"] == "none" else f"{r['k']} {r['demos']} demos chosen by `{r['strategy']}` retrieval"
        lines += [
            "- **Model**: " + model,
            f"- **Prompting**: {demos}; `{r['mode']}` mode (template `{info.get('template', '?')}`); "
            f"mean prompt {info.get('mean_prompt_tokens', 0):.0f} tokens, "
            f"{info.get('seconds_per_patient', 0):.2f} s per patient",
        ]
    else:
        lines += [f"- **Model**: baseline: {info.get('description', r['name'])}"]
    card: ModelCard = context.get("card") or ModelCard()
    provenance = {"test": _short(context["test_hash"]), "pool": _short(context["pool_hash"])}
    if ckpt:
        provenance["SFT training data"] = _short(ckpt["train_hash"])
    lines += [
        *card.markdown(provenance, default_intended_use=_default_use(context)),
        f"- **Data**: {r['n']} test patients ({r['cases']} cases), the same for every arm; threshold "
        f"{r['threshold']:.3f} ({r['threshold_from']}).",
        "- **Metrics (95% bootstrap CI)**: " + "; ".join(f"{_LABELS[m]} {_ci(r, m)}" for m in METRICS),
    ]
    if r["p_value"] is not None:
        lines.append(
            f"- **Against `{reference}`**: ΔAUROC {r['delta_auroc']:+.3f} "
            f"({r['delta_lo']:+.3f} to {r['delta_hi']:+.3f}), DeLong p = {_p(r['p_value'])}"
        )
    lines.append(
        f"- **Calibration**: ECE {_fmt(r['ece'])}, mean predicted {r['mean_probability']:.3f} against "
        f"observed {r['cases'] / r['n']:.3f}"
    )
    lines += [
        "",
        f"Subgroups (fairlearn MetricFrame, {fairness.n_boot} bootstrap resamples; rates at the "
        f"threshold {r['threshold']:.3f}):",
        "",
        subgroups_markdown(fairness, r["name"]),
        "Gaps between groups:",
        "",
        gaps_markdown(
            FairnessReport(
                gaps=[g for g in fairness.gaps if g["name"] == r["name"]],
                oracle=fairness.oracle,
                reference=fairness.reference,
            )
        ),
    ]
    limits = []
    if r["cases"] < 30:
        limits.append(f"only {r['cases']} cases: intervals are wide and small differences are noise")
    if r["p_value"] is not None and r["p_value"] >= 0.05:
        limits.append(f"not distinguishable from `{reference}` at the 5% level")
    if r["threshold_from"] != "validation":
        limits.append(f"F1 at a {r['threshold_from']}")
    if r["kind"] == "arm" and r["demos"] != "none":
        limits.append("demonstrations come from the pool's synthetic rationales and may not transfer to real notes")
    if r.get("p95") is not None and r["p95"] - r["p05"] < NARROW_SPREAD:
        note = (
            f"90% of its predicted probabilities lie between {r['p05']:.3f} and {r['p95']:.3f}: it barely "
            "separates patients, so its F1 and calibration say little"
        )
        if r["kind"] == "arm" and r["mode"] == "score" and ckpt and ckpt.get("target") in ("rationale", "stepwise"):
            note += (
                f' (a {ckpt["target"]} checkpoint was trained to write before it answers: read it with mode = "reason")'
            )
        limits.append(note)
    limits.append("evaluated on the cohort given; subgroup metrics rest on few patients")
    lines += ["", "- **Limitations**: " + "; ".join(limits) + ".", ""]
    return lines


def recalibration_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Brier, ECE, calibration slope and AUROC of each entry raw, Platt-scaled and isotonic (empty without)."""
    if not rows:
        return []
    lines = [
        "## Recalibration",
        "",
        f"Each entry recalibrated on its predictions for the {rows[0]['n_val']} validation patients (scikit-learn: "
        "Platt scaling, a logistic regression on the logit with a positive slope; isotonic regression), then scored "
        "on the test patients. Platt scaling is strictly increasing, so AUROC and AUPRC are exactly unchanged (where "
        "the validation predictions rank the wrong way, it gives the base rate and keeps the order); isotonic "
        "regression pools probabilities into steps, and the ties can move AUROC a little. Calibration slope: 1 "
        "is ideal, below 1 the probabilities are too extreme, above 1 too timid. With few validation patients "
        "a recalibrator can do worse than none: compare with the raw row. All rows: `recalibration.csv`.",
        "",
        "| entry | recalibration | Brier (95% CI) | ECE (95% CI) | slope | AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name'] if r['method'] == 'raw' else ''} | {r['method']} | {_ci(r, 'brier')} | {_ci(r, 'ece')} "
            f"| {_fmt(r['slope'], 2)} | {_fmt(r['auroc'])} |"
        )
    return [*lines, ""]


def probe_section(probes: dict[str, dict[str, Any]]) -> list[str]:
    """What each probe arm chose (layer, pooling, C) and how (empty without probes)."""
    if not probes:
        return []
    lines = [
        "## Probes",
        "",
        "A probe is a logistic regression on the frozen model's hidden states of each patient's zero-shot prompt, "
        "fit on the pool; its layer, pooling and C are chosen on the validation patients only (every trial in "
        "`probes/<arm>/selection.csv`).",
        "",
        "| probe | layer | pooling | C | chosen by |",
        "|---|---|---|---|---|",
    ]
    for name, c in probes.items():
        lines.append(f"| {name} | {c['layer']} | {c['pooling']} | {c['C']} | {c['chosen_by']} |")
    return [*lines, ""]


def tabular_section(tabular: dict[str, dict[str, Any]]) -> list[str]:
    """The tuned baselines: what was chosen, on what, and what the features cost (empty without any)."""
    if not tabular:
        return []
    lines = [
        "## Tuned baselines",
        "",
        "Chosen on the validation patients only (every one in the validation file, not only the `val_limit` "
        "the language-model arms use); the test patients are never read. Every trial is in "
        "`baselines/tuning.csv`.",
        "",
        "| baseline | parameters | chosen by | fit and search (s) | features | feature matrix |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in tabular.items():
        f = t["features"]
        matrix = (
            f"{f['patients']} x {f['features']}, {f['nonzero']:,} non-zero, {f['matrix_mb']} MB, built in "
            f"{f['seconds']} s (windows {', '.join(f['windows'])})"
            if "nonzero" in f
            else f"{f.get('features')} ({f.get('kind')})"
        )
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        lines.append(f"| {name} | {params} | {t['chosen_by']} | {t['fit_seconds']} | {f.get('features')} | {matrix} |")
    return [*lines, ""]


def write_report(
    out: Path,
    rows: Sequence[dict[str, Any]],
    fairness: FairnessReport,
    infos: dict[str, dict[str, Any]],
    context: dict[str, Any],
    plots: Sequence[str],
    contrasts: Sequence[dict[str, Any]] = (),
    recalibration: Sequence[dict[str, Any]] = (),
) -> Path:
    """``report.md``: settings, the results table, plots and a model card per arm and baseline."""
    ref = context["reference"]
    lines = [
        "# Comparison report",
        "",
        f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by icl-toolkit {context['version']}.",
        "",
        "## Data and settings",
        "",
        *([f"- Task: `{context['task']['name']}`: {context['task']['question']}"] if context.get("task") else []),
        f"- Test: `{context['test_file']}`, first {context['n_test']} patients ({context['cases']} cases), "
        f"content hash `{_short(context['test_hash'])}`",
        f"- Demonstration pool / baseline training: `{context['pool_file']}`, {context['n_pool']} patients, hash "
        f"`{_short(context['pool_hash'])}`",
        "- Validation (thresholds for F1): "
        + (f"`{context['val_file']}`, {context['n_val']} patients" if context.get("val_file") else "none (F1 at 0.5)"),
        f"- Bootstrap: {context['bootstrap']} stratified resamples, seed {context['seed']}; DeLong tests are paired, "
        f"against `{ref}`",
        f"- Shared prompt settings: `{context['prompt']}`; retrieval settings: `{context['retrieval']}`",
        "",
        "## Results",
        "",
        markdown_table(rows),
        *(["## Contrasts (paired DeLong)", "", contrast_table(contrasts)] if contrasts else []),
        *tabular_section(context.get("tabular") or {}),
        *probe_section({n: i["probe"] for n, i in infos.items() if i.get("probe")}),
        *recalibration_section(recalibration),
        "## Fairness",
        "",
        "AUROC gap: the largest difference of AUROC between the groups of a grouping (fairlearn "
        f"`MetricFrame.difference`, {fairness.n_boot} bootstrap resamples). The excess gap is this entry's gap "
        "minus the oracle's (what the data itself allows) or the reference's, on the same resamples: above 0 "
        "with an interval above 0 means the entry widens the disparity. Parity and odds differences at each "
        "entry's threshold. Per-group metrics are in each model card and in `subgroups.csv`.",
        "",
        gaps_markdown(fairness),
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        "## Model cards",
        "",
    ]
    for r in rows:
        lines += _model_card(r, fairness, infos.get(r["name"], {}), ref, context)
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
