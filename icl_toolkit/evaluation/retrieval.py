"""How much outcome signal a retriever's neighbours carry (``icl index eval``).

For each retriever and each k, on query patients with known labels (validation
patients, never the test split when a default is being chosen), over the same
pool:

- **neighbour vote**: the share of ADRD among a query's k nearest pool patients
  (the ``similar`` strategy), as a score: its AUROC and AUPRC with stratified
  bootstrap 95% intervals. The embedded model's probability follows the share
  of ADRD among its demonstrations, so this bounds what in-context
  demonstrations can add;
- **label purity**: the share of neighbours whose label is the query's;
- **mean age gap** (years), **sex match** (share), **code overlap** (mean
  Jaccard of the pre-index code sets): what kind of similarity the neighbours
  have;
- **build time** and **query latency** (one query at a time, p50 and p99).

For scale, the same queries' AUROC of the logistic regression on codes, age and
sex and of age alone (both fit on the pool) go beside it. Retrieval uses the
same code as prediction (:class:`~icl_toolkit.retrieval.retriever.Retriever`), so a query
is never its own neighbour and only pre-index data are used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.progress import progress_bar
from icl_toolkit.data.cohort import Patient
from icl_toolkit.evaluation.metrics import bootstrap_ci
from icl_toolkit.retrieval.config import RetrievalConfig
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.index import DemoIndex
from icl_toolkit.retrieval.representations import clinical_tokens
from icl_toolkit.retrieval.retriever import Retriever

__all__ = ["RetrievalReport", "evaluate_retrievers", "plot_report", "verdict", "DEFAULT_KS"]

DEFAULT_KS = (1, 2, 4, 8, 16, 64)


@dataclass
class RetrievalReport:
    """Rows per retriever and k, and the reference AUROCs of the same queries."""

    rows: list[dict[str, Any]]
    references: list[dict[str, Any]]
    n_queries: int
    cases: int
    n_pool: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_queries": self.n_queries,
            "cases": self.cases,
            "n_pool": self.n_pool,
            "rows": self.rows,
            "references": self.references,
        }


def verdict(report: RetrievalReport, k: int = 4, default: str | None = None) -> list[str]:
    """What the report says, in words: at ``k`` (the evaluated k nearest to it), the retriever with the highest
    neighbour-vote AUROC, whether its interval separates it from the others, and how it stands against age alone.

    Args:
        report: from :func:`evaluate_retrievers`.
        k: the number of demonstrations the choice is for.
        default: the default retriever's name, said when the choice is not clear.

    Returns:
        Lines to print (empty when the report has no rows).
    """
    if not report.rows:
        return []
    at = min({r["k"] for r in report.rows}, key=lambda x: (abs(x - k), x))
    rows = sorted((r for r in report.rows if r["k"] == at), key=lambda r: -r["auroc"])
    best = rows[0]

    def said(r: dict[str, Any]) -> str:
        return f"{r['auroc']:.3f} ({r['auroc_lo']:.3f}-{r['auroc_hi']:.3f})"

    lines = [
        f"verdict at k={at} on {report.n_queries} patients ({report.cases} cases): {best['retriever']} has the "
        f"highest neighbour vote, {said(best)}."
    ]
    if len(rows) > 1:
        overlap = [r for r in rows[1:] if r["auroc_hi"] >= best["auroc_lo"]]
        if overlap:
            names = ", ".join(f"{r['retriever']} {said(r)}" for r in overlap)
            keep = (
                f", so they give no reason to change the default ({default})"
                if default and default != best["retriever"] and any(r["retriever"] == default for r in overlap)
                else ""
            )
            lines.append(
                f"Its interval overlaps those of {names}: these patients do not separate them{keep}. "
                "Use more validation patients to choose."
            )
        else:
            lines.append(
                f"Its interval is clear of every other retriever's (next: {rows[1]['retriever']} "
                f"{said(rows[1])}): choose --retriever {best['retriever']}."
            )
    age = next((r for r in report.references if r["reference"] == "age only"), None)
    if age is not None:
        if best["auroc_lo"] > age["auroc_hi"]:
            stand = "above it: the neighbours carry signal beyond age"
        elif best["auroc_hi"] < age["auroc_lo"]:
            stand = "below it: the neighbours carry less outcome signal than age alone"
        else:
            stand = "not distinguishable from it: the neighbours carry no clear signal beyond age"
        lines.append(f"Against age alone ({said(age)}) the best vote is {stand}.")
    return lines


def _ci(labels: np.ndarray, scores: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    ci = bootstrap_ci(labels, scores, n_resamples=n_boot, seed=seed, metrics=("auroc", "auprc"))
    return {
        "auroc": ci["auroc"]["value"],
        "auroc_lo": ci["auroc"]["lo"],
        "auroc_hi": ci["auroc"]["hi"],
        "auprc": ci["auprc"]["value"],
        "auprc_lo": ci["auprc"]["lo"],
        "auprc_hi": ci["auprc"]["hi"],
    }


def _latency(retriever: Retriever, queries: Sequence[Patient], n: int = 200) -> tuple[float, float]:
    """p50 and p99 milliseconds of retrieving for one query at a time (representation + search + strategy)."""
    sample = list(queries)[:n]
    retriever.retrieve(sample[:2], progress=False)  # warm-up
    times = []
    for p in sample:
        start = time.perf_counter()
        retriever.retrieve([p], progress=False)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def evaluate_retrievers(
    pool: Sequence[Patient],
    queries: Sequence[Patient],
    configs: Sequence[RetrievalConfig],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    embedder: ProfileEmbedder | None = None,
    index: DemoIndex | str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    latency_queries: int = 200,
    progress: bool = True,
) -> RetrievalReport:
    """The report of the module docstring for each retriever in ``configs`` (their ``k`` and ``strategy`` are
    ignored: neighbours are the ``max(ks)`` most similar, and each k reads the first k of them).

    Args:
        pool: labelled demonstration pool.
        queries: labelled query patients of both classes.
        configs: the retrievers and their settings.
        ks: neighbour counts.
        embedder: profile embedder for dense and hybrid (default: the embedded MiniLM).
        index: an index built for the (single) retriever in ``configs``, checked against it.
        n_boot: bootstrap resamples for the intervals.
        latency_queries: queries timed one at a time.
    """
    from icl_toolkit.evaluation.baselines import fit_age_only, fit_logreg, predict_age, predict_logreg

    pool, queries = list(pool), list(queries)
    y = np.array([-1 if p.label is None else p.label for p in queries])
    if (y < 0).any() or len(set(y.tolist())) < 2:
        raise ConfigError("The retrieval report needs query patients with known labels of both classes.")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k: neighbour counts must be >= 1, got {ks}.")
    if ks[-1] > len(pool):
        raise ConfigError(f"--k: {ks[-1]} neighbours asked, but the pool has {len(pool)} patients.")
    if index is not None and len(configs) != 1:
        raise ConfigError("--index evaluates the retriever it was built with: name exactly one --retriever.")
    pool_y = np.array([p.label for p in pool])
    ages = np.array([p.age_at_index for p in pool])
    sexes = np.array([p.sex for p in pool])
    pool_codes = [set(clinical_tokens(p)) for p in pool]
    q_codes = [set(clinical_tokens(p)) for p in queries]
    rows = []
    with progress_bar("retrievers", len(configs), progress) as advance:
        for config in configs:
            config = config.model_copy(update={"k": ks[-1], "strategy": "similar"})
            start = time.perf_counter()
            retriever = Retriever(config, embedder).fit(pool, index, progress=False)
            build_s = time.perf_counter() - start
            embedder = embedder or retriever.embedder
            found = retriever.retrieve(queries, progress=False)
            p50, p99 = _latency(retriever, queries, latency_queries)
            rows_of = [[h.row for h in r.hits] for r in found]
            for k in ks:
                nbr = [r[:k] for r in rows_of]
                vote = np.array([pool_y[r].mean() if r else 0.0 for r in nbr])
                purity = np.mean([np.mean(pool_y[r] == yq) for r, yq in zip(nbr, y) if r])
                age_gap = np.mean([np.mean(np.abs(ages[r] - q.age_at_index)) for r, q in zip(nbr, queries) if r])
                sex = np.mean([np.mean(sexes[r] == q.sex) for r, q in zip(nbr, queries) if r])
                overlap = np.mean(
                    [
                        np.mean([len(qc & pool_codes[j]) / max(len(qc | pool_codes[j]), 1) for j in r])
                        for r, qc in zip(nbr, q_codes)
                        if r
                    ]
                )
                rows.append(
                    {
                        "retriever": config.retriever,
                        "k": k,
                        **_ci(y, vote, n_boot, seed),
                        "purity": float(purity),
                        "age_gap": float(age_gap),
                        "sex_match": float(sex),
                        "code_overlap": float(overlap),
                        "build_s": round(build_s, 3),
                        "query_ms_p50": round(p50, 3),
                        "query_ms_p99": round(p99, 3),
                    }
                )
            advance(1)
    references = [
        {
            "reference": "logistic regression (codes + age + sex)",
            **_ci(y, np.array(predict_logreg(fit_logreg(pool), queries)), n_boot, seed),
        },
        {"reference": "age only", **_ci(y, np.array(predict_age(fit_age_only(pool), queries)), n_boot, seed)},
    ]
    return RetrievalReport(rows, references, len(queries), int(y.sum()), len(pool))


def plot_report(report: RetrievalReport, path: str | Path, title: str = "") -> None:
    """Neighbour-vote AUROC (95% CI) against k, one line per retriever, with the references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in dict.fromkeys(r["retriever"] for r in report.rows):
        sub = [r for r in report.rows if r["retriever"] == name]
        ks = [r["k"] for r in sub]
        ax.plot(ks, [r["auroc"] for r in sub], marker="o", label=name)
        ax.fill_between(ks, [r["auroc_lo"] for r in sub], [r["auroc_hi"] for r in sub], alpha=0.12)
    for ref, style in zip(report.references, ("--", ":")):
        ax.axhline(ref["auroc"], color="grey", ls=style, lw=1, label=f"{ref['reference']} {ref['auroc']:.2f}")
    ax.axhline(0.5, color="black", lw=0.5)
    ax.set(
        xscale="log",
        xlabel="neighbours k",
        ylabel="AUROC of the neighbour vote",
        title=title or f"{report.n_queries} queries ({report.cases} cases), pool {report.n_pool}",
    )
    ks_all = sorted({r["k"] for r in report.rows})
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
