"""Summary statistics of a cohort: size, outcome rate, oracle AUROC, history and rationale lengths."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from icl_toolkit.data.cohort import Event, Patient
from icl_toolkit.data.serialize import condensed_profile, serialize_history, token_counter

__all__ = ["describe_cohort", "oracle_auroc", "group_summary", "plot_cohort"]


def _dist(values: Sequence[float]) -> dict[str, float] | None:
    if not len(values):
        return None
    a = np.asarray(values, dtype=float)
    return {
        "mean": round(float(a.mean()), 2),
        "median": round(float(np.median(a)), 2),
        "p10": round(float(np.percentile(a, 10)), 2),
        "p90": round(float(np.percentile(a, 90)), 2),
        "min": round(float(a.min()), 2),
        "max": round(float(a.max()), 2),
    }


def _history_years(p: Patient, hist: Sequence[Event]) -> float:
    """Years from the first event of the history to the index date (0 for an empty history)."""
    return (p.index_date - min((e.date for e in hist), default=p.index_date)).days / 365.25


def oracle_auroc(patients: Sequence[Patient]) -> float | None:
    """AUROC of the stored true risk (``metadata.true_risk``) against the labels, if every labelled patient has one."""
    from sklearn.metrics import roc_auc_score

    labelled = [p for p in patients if p.label is not None]
    risks = [p.metadata.get("true_risk") for p in labelled]
    if not labelled or any(not isinstance(r, (int, float)) for r in risks):
        return None
    y = [p.label for p in labelled]
    if len(set(y)) < 2:
        return None
    return float(roc_auc_score(y, risks))


def group_summary(patients: Sequence[Patient]) -> list[dict[str, Any]]:
    """Per value of each group attribute (``Patient.groups``): patients, prevalence, mean true risk, history
    events and visits per patient, and the oracle AUROC (true risk against labels) within the group: what the
    data itself allows in each group, for a model's subgroup gap to be measured against."""
    rows = []
    for attr in sorted({a for p in patients for a in p.groups}):
        for value in sorted({p.groups[attr] for p in patients if attr in p.groups}):
            sub = [p for p in patients if p.groups.get(attr) == value]
            hists = [p.history() for p in sub]
            risks = [p.metadata.get("true_risk") for p in sub]
            known = [p.label for p in sub if p.label is not None]
            auc = oracle_auroc(sub)
            rows.append(
                {
                    "attribute": attr,
                    "value": value,
                    "n": len(sub),
                    "prevalence": round(sum(known) / len(known), 4) if known else None,
                    "mean_true_risk": round(float(np.mean([float(r) for r in risks if isinstance(r, int | float)])), 4)
                    if all(isinstance(r, int | float) for r in risks)
                    else None,
                    "events_per_patient": round(float(np.mean([len(h) for h in hists])), 2),
                    "visits_per_patient": round(float(np.mean([sum(e.kind == "visit" for e in h) for h in hists])), 2),
                    "oracle_auroc": round(auc, 4) if auc is not None else None,
                }
            )
    return rows


def describe_cohort(
    patients: Sequence[Patient], *, tokens: bool = True, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Statistics of a cohort as a JSON-ready dict.

    Args:
        patients: the cohort.
        tokens: also count history tokens (default language model), profile
            tokens (default embedder) and rationale tokens; slower.
        progress: called with the number of patients processed, for a progress bar.
    """
    labels = [p.label for p in patients]
    hists = [p.history() for p in patients]
    known = [y for y in labels if y is not None]
    out: dict[str, Any] = {
        "n": len(patients),
        "n_labelled": len(known),
        "n_positive": int(sum(known)),
        "prevalence": round(sum(known) / len(known), 4) if known else None,
        "oracle_auroc": None,
        "female_fraction": round(sum(p.sex == "F" for p in patients) / max(1, len(patients)), 4),
        "age_at_index": _dist([p.age_at_index for p in patients]),
        "events_per_patient": _dist([len(h) for h in hists]),
        "history_years": _dist([_history_years(p, h) for p, h in zip(patients, hists) if h]),
        "events_after_index": sum(len(p.events) - len(h) for p, h in zip(patients, hists)),
        "splits": {},
    }
    auc = oracle_auroc(patients)
    out["oracle_auroc"] = round(auc, 4) if auc is not None else None
    for name in ("train", "val", "test", None):
        group = [p for p in patients if p.split == name]
        if group and (name is not None or len(group) < len(patients)):
            ys = [p.label for p in group if p.label is not None]
            out["splits"][name or "none"] = {"n": len(group), "prevalence": round(sum(ys) / len(ys), 4) if ys else None}
    with_r = [p.rationales for p in patients if p.rationales is not None]
    out["n_with_rationales"] = len(with_r)
    out["rationale_words"] = {
        "free_text": _dist([len(r.free_text.split()) for r in with_r if r.free_text]),
        "stepwise": _dist([len(r.stepwise.split()) for r in with_r if r.stepwise]),
    }
    if tokens and patients:
        from icl_toolkit.core.models import load_embedder_tokenizer, load_tokenizer

        lm = token_counter(load_tokenizer("default"))
        emb = token_counter(load_embedder_tokenizer("default"), special_tokens=True)
        hist_tokens: list[int] = []
        prof_tokens: list[int] = []
        prof_cut = 0
        step = 256
        for start in range(0, len(patients), step):
            chunk = patients[start : start + step]
            hist_tokens += lm([serialize_history(p).text for p in chunk])
            for p in chunk:
                prof = condensed_profile(p, counter=emb)
                prof_tokens.append(prof.n_tokens or 0)
                prof_cut += prof.truncated
            if progress is not None:
                progress(len(chunk))
        out["history_tokens"] = _dist(hist_tokens)
        out["profile_tokens"] = _dist(prof_tokens)
        out["profiles_shortened"] = prof_cut
        out["rationale_tokens"] = {
            "free_text": _dist(lm([r.free_text for r in with_r if r.free_text])),
            "stepwise": _dist(lm([r.stepwise for r in with_r if r.stepwise])),
        }
    return out


def plot_cohort(patients: Sequence[Patient], path: str, stats: dict[str, Any] | None = None) -> None:
    """A one-page picture of a cohort: age, true risk (or recent visits), events and history length, by outcome.

    Writes a PNG (or any format matplotlib knows from the suffix) to ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {
        "ADRD within 5 y": [p for p in patients if p.label == 1],
        "no ADRD": [p for p in patients if p.label == 0],
    }
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    has_risk = any(isinstance(p.metadata.get("true_risk"), (int, float)) for p in patients)
    panels = [
        ("age at index (years)", lambda p: p.age_at_index, axes[0, 0]),
        ("true 5-year risk (metadata)", lambda p: p.metadata.get("true_risk"), axes[0, 1])
        if has_risk
        else (
            "visits in the last 5 years before the index date",
            lambda p: sum(1 for e in p.history() if e.kind == "visit" and (p.index_date - e.date).days <= 5 * 365.25),
            axes[0, 1],
        ),
        ("events before the index date", lambda p: len(p.history()), axes[1, 0]),
        ("years of history", lambda p: _history_years(p, p.history()), axes[1, 1]),
    ]
    for title, value, ax in panels:
        for name, group in groups.items():
            xs = [value(p) for p in group]
            xs = [x for x in xs if isinstance(x, (int, float))]
            if xs:
                ax.hist(xs, bins=30, alpha=0.55, density=True, label=f"{name} (n={len(group)})")
        ax.set_title(title)
        ax.set_ylabel("density")
    axes[0, 0].legend(fontsize=8)
    subtitle = ""
    if stats is not None:
        auc = stats.get("oracle_auroc")
        prev = stats.get("prevalence")
        subtitle = (
            f"n={stats['n']}"
            + (f", prevalence {prev:.3f}" if prev is not None else "")
            + (f", oracle AUROC {auc:.3f}" if auc is not None else "")
        )
    fig.suptitle(f"Cohort overview  {subtitle}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
