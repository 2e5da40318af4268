"""``icl report``: reports over prediction files (``icl report fairness``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from icl_toolkit.cli._common import console, err_console, progress_bar
from icl_toolkit.core.errors import ConfigError

app = typer.Typer(help="Reports over prediction files.", no_args_is_help=True)


def _named(specs: list[str]) -> dict[str, Path]:
    """``NAME=FILE`` or ``FILE`` (named after the file) per --predictions."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise ConfigError(f"--predictions expects FILE or NAME=FILE. Got {spec!r}.")
        if name in out:
            raise ConfigError(f"--predictions: the name {name!r} is given twice; name them NAME=FILE.")
        if not Path(path).is_file():
            raise ConfigError(f"--predictions: {path} does not exist (the JSONL that icl predict --out wrote).")
        out[name] = Path(path)
    return out


@app.command()
def fairness(
    predictions: Annotated[
        list[str],
        typer.Option(
            help="A prediction file of `icl predict` (JSONL), as FILE or NAME=FILE; repeat to compare several."
        ),
    ],
    cohort: Annotated[
        Path,
        typer.Option(help="The cohort the predictions were made on: labels, sex, birth date and group attributes."),
    ],
    out: Annotated[
        Path, typer.Option(help="Folder for fairness.md, subgroups.csv, fairness_gaps.csv and fairness.png.")
    ] = Path("fairness"),
    threshold: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Threshold of the selection rate, TPR and FPR (and so of the parity and odds differences).",
        ),
    ] = 0.5,
    reference: Annotated[
        Optional[str], typer.Option(help="Name of a prediction file the excess gap is also measured against.")
    ] = None,
    oracle: Annotated[
        bool,
        typer.Option(
            help="Add the synthetic cohort's true risk (metadata.true_risk) as the oracle, when every patient has it."
        ),
    ] = True,
    resamples: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples (fairlearn MetricFrame; 0: point values only).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Subgroup metrics with CIs and fairness gaps of prediction files (fairlearn), by sex, age band and the
    cohort's group attributes, beside the oracle's gap on a synthetic cohort."""
    from icl_toolkit.core.artifacts import write_json_atomic
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.evaluation.fairness import (
        ORACLE,
        fairness_report,
        gaps_markdown,
        group_attributes,
        plot_fairness,
        predictions_with_cohort,
        subgroups_markdown,
        write_fairness_tables,
    )

    files = _named(predictions)
    if reference is not None and reference not in files:
        raise ConfigError(f"--reference {reference!r} is not one of the --predictions names ({', '.join(files)}).")
    patients = read_cohort(cohort)
    probs, kept, dropped = predictions_with_cohort(files, patients, cohort_name=str(cohort))
    risks = [p.metadata.get("true_risk") for p in kept]
    known = [float(r) for r in risks if isinstance(r, int | float)]
    use_oracle = oracle and len(known) == len(risks)
    if use_oracle:
        probs[ORACLE] = known
    if dropped["unlabelled"] or dropped["not_predicted"] or dropped["failed"]:
        err_console.print(
            f"left out: {dropped['unlabelled']} unlabelled patients, {dropped['not_predicted']} "
            f"without a prediction in every file, {dropped['failed']} failed prediction records",
            highlight=False,
        )
    groups = group_attributes(kept)
    with progress_bar(f"fairness ({resamples} bootstrap resamples)", len(probs) * len(groups)) as advance:
        labels = [int(p.label or 0) for p in kept]  # kept: labelled patients only
        report = fairness_report(
            probs,
            labels,
            groups,
            thresholds={n: threshold for n in probs},
            oracle=ORACLE if use_oracle else None,
            reference=reference,
            n_boot=resamples,
            seed=seed,
            progress=advance,
        )
    out.mkdir(parents=True, exist_ok=True)
    write_fairness_tables(out, report)
    plot_fairness(out / "fairness.png", report)
    n_cases = sum(labels)
    lines = [
        "# Fairness report",
        "",
        f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}: {len(kept)} labelled patients "
        f"({n_cases} cases) of `{cohort}`; threshold {threshold}; {resamples} bootstrap resamples "
        f"(fairlearn MetricFrame), seed {seed}. Groupings: {', '.join(groups)}.",
        "",
        "## Gaps between groups",
        "",
        gaps_markdown(report),
        "",
        "![fairness](fairness.png)",
        "",
    ]
    for name, path in [*files.items(), *([(ORACLE, None)] if use_oracle else [])]:
        lines += [f"## {name}" + (f" (`{path}`)" if path else ""), "", subgroups_markdown(report, name), ""]
    (out / "fairness.md").write_text("\n".join(lines), encoding="utf-8")
    write_json_atomic(
        out / "fairness.json",
        {
            "patients": len(kept),
            "cases": n_cases,
            "left_out": dropped,
            "threshold": threshold,
            "resamples": resamples,
            "seed": seed,
            "oracle": use_oracle,
            "reference": reference,
            "gaps": report.gaps,
            "subgroups": report.subgroups,
        },
    )
    table = Table(title=f"AUROC gaps between groups ({len(kept)} patients, {n_cases} cases)")
    for col in (
        "predictor",
        "grouping",
        "AUROC gap (95% CI)",
        "lowest",
        "vs oracle (95% CI)",
        "parity diff.",
        "odds diff.",
    ):
        table.add_column(col)
    for g in report.gaps:
        ex = (
            (
                f"{g['excess_vs_oracle']:+.3f} ({g.get('excess_vs_oracle_lo', float('nan')):+.3f} to "
                f"{g.get('excess_vs_oracle_hi', float('nan')):+.3f})"
            )
            if "excess_vs_oracle" in g
            else "-"
        )
        ci = f" ({g['auroc_gap_lo']:.3f}-{g['auroc_gap_hi']:.3f})" if "auroc_gap_lo" in g else ""
        table.add_row(
            g["name"],
            g["group"],
            f"{g['auroc_gap']:.3f}{ci}",
            str(g.get("lowest_auroc_group")),
            ex,
            f"{g['demographic_parity_difference']:.3f}",
            f"{g['equalized_odds_difference']:.3f}",
        )
    console.print(table)
    console.print(
        f"wrote {out / 'fairness.md'}, subgroups.csv, fairness_gaps.csv, fairness.json and fairness.png",
        highlight=False,
    )


@app.command()
def baselines(
    pool: Annotated[Path, typer.Option(help="Labelled patients to fit the baselines on (cohort JSONL).")],
    test: Annotated[Path, typer.Option(help="Labelled patients to score (cohort JSONL).")],
    val: Annotated[
        Optional[Path],
        typer.Option(help="Validation patients the parameters are chosen on; without them, stated defaults."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for baselines.md, tuning.csv and one JSONL per baseline.")] = Path(
        "baselines"
    ),
    kind: Annotated[
        list[str], typer.Option("--kind", help="Baselines to fit: logreg, gbt (repeat the flag; default both).")
    ] = ["logreg", "gbt"],  # noqa: B006 - typer reads list defaults
    windows: Annotated[
        str, typer.Option(help='Feature windows of gbt, in days before the index date or "all", comma-separated.')
    ] = "30,365,all",
    trials: Annotated[int, typer.Option(min=1, max=200, help="Random-search trials of gbt.")] = 12,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples of the intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the search and the bootstrap.")] = 0,
) -> None:
    """The tuned tabular baselines of `icl compare` on any cohort: logistic regression on the codes present
    (C chosen on --val) and LightGBM trees on windowed code counts and values (parameters chosen on --val), with
    AUROC, AUPRC and Brier intervals on --test. Each prediction file can go to `icl report fairness`."""
    import json

    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.evaluation import tabular as tab
    from icl_toolkit.evaluation.metrics import bootstrap_ci

    bad = [k for k in kind if k not in tab.TABULAR_NAMES]
    if bad:
        raise ConfigError(f"--kind {bad[0]!r} is not a tabular baseline; use {' or '.join(tab.TABULAR_NAMES)}.")
    config = tab.TabularConfig(
        windows=tuple(int(w) if w.strip().isdigit() else w.strip() for w in windows.split(",")), trials=trials
    )
    pool_p, test_p = read_cohort(pool), read_cohort(test)
    val_p = read_cohort(val) if val else []
    if any(p.label is None for p in test_p) or len({p.label for p in test_p}) < 2:
        raise ConfigError(f"{test}: the test patients need known labels of both classes to be scored.")
    y = [int(p.label or 0) for p in test_p]
    out.mkdir(parents=True, exist_ok=True)
    fitted: list[tab.TabularBaseline] = []
    rows: list[dict[str, Any]] = []
    with progress_bar("tabular baselines", len(kind)) as advance:
        for k in kind:
            b = tab.fit_tabular(k, pool_p, val_p, config, seed=seed)
            probs = b.predict(test_p)
            fitted.append(b)
            with open(out / f"{b.name.replace(' ', '_').replace('+', '_')}.jsonl", "w") as fh:
                for p, q in zip(test_p, probs):
                    fh.write(json.dumps({"patient_id": p.patient_id, "probability": q, "label": p.label}) + "\n")
            ci = bootstrap_ci(y, probs, n_resamples=resamples, seed=seed, metrics=("auroc", "auprc", "brier"))
            rows.append(
                {
                    "name": b.name,
                    **{f"{m}{s}": ci[m][x] for m in ci for s, x in (("", "value"), ("_lo", "lo"), ("_hi", "hi"))},
                }
                | b.summary()
            )
            advance(1)
    tab.write_tuning(out / "tuning.csv", fitted)
    table = Table("baseline", "AUROC (95% CI)", "AUPRC", "Brier", "chosen by")
    lines = [
        "| baseline | AUROC (95% CI) | AUPRC (95% CI) | Brier (95% CI) | parameters | chosen by |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cis = {m: f"{r[m]:.3f} ({r[m + '_lo']:.3f}-{r[m + '_hi']:.3f})" for m in ("auroc", "auprc", "brier")}
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        table.add_row(r["name"], cis["auroc"], f"{r['auprc']:.3f}", f"{r['brier']:.3f}", r["chosen_by"])
        lines.append(
            f"| {r['name']} | {cis['auroc']} | {cis['auprc']} | {cis['brier']} | {params} | {r['chosen_by']} |"
        )
    (out / "baselines.md").write_text(
        f"# Tabular baselines\n\nFit on `{pool}` ({len(pool_p)} patients), chosen on "
        + (f"`{val}` ({len(val_p)} patients)" if val else "nothing (stated defaults)")
        + f", scored on `{test}` ({len(test_p)} patients, {sum(y)} cases); {resamples} bootstrap resamples.\n\n"
        + "\n".join(lines)
        + "\n",
        encoding="utf-8",
    )
    console.print(table)
    console.print(f"wrote {out}/baselines.md, tuning.csv and {len(fitted)} prediction files", highlight=False)
