"""``icl report``: reports over prediction files (``icl report fairness``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

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
