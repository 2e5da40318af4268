"""Statistics of every arm and baseline on the same test patients.

Per entry: AUROC, AUPRC, Brier, ECE and F1 at the threshold that maximises F1
on the validation split (0.5 when there is none), each with a seeded stratified
bootstrap 95% interval; the paired DeLong test of its AUROC against the
reference arm's; and the subgroup and fairness report of :mod:`icl_toolkit.evaluation.fairness`
(fairlearn's ``MetricFrame``: by sex, age band and each group attribute, with
bootstrap intervals, and each entry's AUROC gap against the oracle's and the
reference's on the same resamples).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.progress import progress_bar
from icl_toolkit.data.cohort import Patient
from icl_toolkit.evaluation.baselines import RISK_SHOWN, vote_name
from icl_toolkit.evaluation.fairness import ORACLE, FairnessReport, fairness_report, group_attributes
from icl_toolkit.evaluation.metrics import bootstrap_ci, choose_threshold, delong_test
from icl_toolkit.evaluation.tabular import TABULAR_NAMES

__all__ = ["Entry", "evaluate", "contrast_rows", "standard_contrasts", "METRICS", "ORACLE", "TABULAR"]

METRICS = ("auroc", "auprc", "brier", "ece", "f1")


@dataclass
class Entry:
    """Predictions of one arm or baseline on the test (and validation) patients, in cohort order."""

    name: str
    kind: str  # "arm" or "baseline"
    test: list[float]
    val: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # checkpoint, demos, k, strategy, mode, ...


def evaluate(
    entries: Sequence[Entry],
    test: Sequence[Patient],
    val: Sequence[Patient] | None,
    *,
    reference: str,
    n_resamples: int = 1000,
    seed: int = 0,
    fairness_resamples: int = 200,
    progress: bool = False,
    fairness_cache: MutableMapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], FairnessReport]:
    """Result rows (one per entry) and the fairness report (subgroup rows per entry, grouping and value; gap
    rows per entry and grouping; ``fairness_cache`` as :func:`~icl_toolkit.evaluation.fairness.fairness_report` takes it).

    Raises:
        ValueError: the test patients lack labels of either class, or an entry's length differs.
    """
    y = np.array([p.label for p in test])
    if any(p.label is None for p in test) or len(set(y.tolist())) < 2:
        raise ConfigError("The comparison needs test patients with known labels of both classes.")
    yv = np.array([p.label for p in val]) if val else None
    by_name = {e.name: e for e in entries}
    ref = by_name[reference]
    rows = []
    thresholds: dict[str, float] = {}
    for e in entries:
        if len(e.test) != len(y):
            raise ConfigError(f"{e.name}: {len(e.test)} test predictions for {len(y)} patients.")
        p = np.asarray(e.test, dtype=float)
        has_val = yv is not None and e.val is not None and len(set(yv.tolist())) == 2
        threshold = choose_threshold(yv, e.val) if yv is not None and e.val is not None and has_val else 0.5
        if has_val:
            source = "validation"
        elif yv is None or e.val is None:
            source = "fixed 0.5: no validation split given"
        else:
            kind = "no case" if not yv.any() else "no control"
            source = f"fixed 0.5: the {len(yv)} validation patients hold {kind}, so no threshold could be chosen"
        ci = bootstrap_ci(y, p, n_resamples=n_resamples, seed=seed, threshold=threshold, metrics=METRICS)
        row: dict[str, Any] = (
            {"name": e.name, "kind": e.kind}
            | e.info
            | {
                "n": int(len(y)),
                "cases": int(y.sum()),
                "threshold": round(threshold, 6),
                "threshold_from": source,
            }
        )
        for m in METRICS:
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = ci[m]["value"], ci[m]["lo"], ci[m]["hi"]
        row["mean_probability"] = float(p.mean())
        row["p05"], row["p95"] = (float(q) for q in np.quantile(p, [0.05, 0.95]))
        if e.name == reference:
            row.update(delta_auroc=0.0, delta_lo=0.0, delta_hi=0.0, p_value=None)
        else:
            d = delong_test(y, p, ref.test)
            row.update(delta_auroc=d.difference, delta_lo=d.ci_low, delta_hi=d.ci_high, p_value=d.p_value)
        rows.append(row)
        thresholds[e.name] = threshold
    groups = group_attributes(test)
    with progress_bar(
        f"fairness ({fairness_resamples} bootstrap resamples)", len(entries) * len(groups), progress
    ) as advance:
        fairness = fairness_report(
            {e.name: e.test for e in entries},
            y,
            groups,
            thresholds=thresholds,
            oracle=ORACLE if ORACLE in by_name else None,
            reference=reference,
            n_boot=fairness_resamples,
            seed=seed,
            progress=advance,
            cache=fairness_cache,
        )
    kinds = {e.name: e.kind for e in entries}
    for r in (*fairness.subgroups, *fairness.gaps):
        r["kind"] = kinds[r["name"]]
    return rows, fairness


TABULAR = tuple(TABULAR_NAMES.values())
"""The tabular baselines' entry names (the strongest of them is what a language-model arm must beat)."""


def _val_auroc(e: Entry, yv: np.ndarray | None) -> float | None:
    from sklearn.metrics import roc_auc_score

    if yv is None or e.val is None or len(set(yv.tolist())) < 2:
        return None
    return float(roc_auc_score(yv, e.val))


def standard_contrasts(
    entries: Sequence[Entry], test: Sequence[Patient], val: Sequence[Patient] | None
) -> list[tuple[str, str, str]]:
    """The contrasts every report names, as ``(a, b, question)``:

    - each demonstration arm against the vote of the very neighbours it showed (``kNN vote <strategy> k=<k>``):
      does the model add anything to its demonstrations' outcomes?
    - the best language-model arm against the strongest tabular baseline, each chosen by its validation AUROC
      (by test AUROC only when there are no validation predictions, and the question says so);
    - each probe against the prompted reading of the same checkpoint (``<checkpoint> / none / score``).
    """
    yv = np.array([p.label for p in val]) if val else None
    by_name = {e.name: e for e in entries}
    y = np.array([p.label for p in test])
    out: list[tuple[str, str, str]] = []
    arms = [e for e in entries if e.kind == "arm"]
    for e in arms:
        demos, k, strategy = e.info.get("demos"), e.info.get("k"), e.info.get("strategy")
        vote = vote_name(str(strategy), int(k or 0), e.info.get("checkpoint"))
        if demos not in (None, "none", "-") and vote in by_name:
            out.append((e.name, vote, "does the model add to the vote of the demos it was shown?"))
        if e.info.get("show_risk") and RISK_SHOWN in by_name:
            out.append((e.name, RISK_SHOWN, "does the model add anything to the score it is shown?"))
    tabular = [by_name[n] for n in TABULAR if n in by_name]
    lm = [e for e in arms if e.info.get("family") != "tabular"]
    if tabular and lm:
        scores = {e.name: _val_auroc(e, yv) for e in [*lm, *tabular]}
        if all(s is not None for s in scores.values()):
            how = "chosen by validation AUROC"
            key: Any = lambda e: scores[e.name]  # noqa: E731
        else:
            from sklearn.metrics import roc_auc_score

            how = "chosen by TEST AUROC (no validation predictions): optimistic"
            key = lambda e: float(roc_auc_score(y, e.test))  # noqa: E731
        best_lm, best_tab = max(lm, key=key), max(tabular, key=key)
        out.append(
            (best_lm.name, best_tab.name, f"the best language-model arm against the strongest tabular baseline ({how})")
        )
    for e in arms:
        if e.info.get("arm_kind") == "probe":
            prompted = f"{e.info.get('checkpoint')} / none / score"
            if prompted in by_name:
                out.append((e.name, prompted, "does the model represent more than it says when prompted?"))
    return out


def contrast_rows(
    entries: Sequence[Entry], test: Sequence[Patient], contrasts: Sequence[tuple[str, ...]]
) -> list[dict[str, Any]]:
    """The paired DeLong test of each ``(a, b)`` or ``(a, b, question)`` present among ``entries``: AUROC of
    both, the difference ``a - b`` with its 95% CI, and the two-sided p-value (pairs with an arm not run are
    left out; a pair named twice is tested once)."""
    y = np.array([p.label for p in test])
    by_name = {e.name: e for e in entries}
    rows = []
    seen = set()
    for a, b, *question in contrasts:
        if a not in by_name or b not in by_name or (a, b) in seen:
            continue
        seen.add((a, b))
        d = delong_test(y, by_name[a].test, by_name[b].test)
        rows.append(
            {
                "a": a,
                "b": b,
                "question": question[0] if question else "named in the config",
                "n": int(len(y)),
                "cases": int(y.sum()),
                "auroc_a": d.auroc_a,
                "auroc_b": d.auroc_b,
                "difference": d.difference,
                "lo": d.ci_low,
                "hi": d.ci_high,
                "p_value": d.p_value,
                "se": d.se,
            }
            | power(d.se, len(y))
        )
    return rows


POWER = 0.8
"""The power the detectable difference of a contrast is stated at (two-sided test at 5%)."""
TARGET_DIFFERENCE = 0.05
"""The AUROC difference whose required test-set size each contrast reports."""


def power(se: float, n: int, *, alpha: float = 0.05, target: float = TARGET_DIFFERENCE) -> dict[str, float]:
    """What a paired test with standard error ``se`` on ``n`` patients can tell (normal approximation, the
    observed standard error taken as the truth's):

    - ``detectable_80``: the smallest true AUROC difference it detects with 80% power at two-sided ``alpha``,
      ``(z_{1-alpha/2} + z_{0.8}) * se`` (2.80 se);
    - ``patients_for_0_05``: test patients (same case mix) needed to detect a difference of ``target`` with
      80% power, the standard error shrinking as ``1/sqrt(n)``.
    """
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(POWER))
    detectable = z * se
    needed = n * (detectable / target) ** 2 if se > 0 else 0.0
    return {"detectable_80": detectable, "patients_for_0_05": float(np.ceil(needed))}
