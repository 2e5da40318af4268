"""``icl compare``: every arm of arms.toml and the baselines on the same test patients, with statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from icl_toolkit.cli._common import console, err_console


def compare(
    config: Annotated[Path, typer.Option(help="Arms file (TOML): checkpoints, arms, baselines, statistics.")],
    test: Annotated[Path, typer.Option(help="Test cohort (JSONL) with labels.")],
    pool: Annotated[Path, typer.Option(help="Demonstration pool and baseline training data (JSONL).")],
    out: Annotated[Path, typer.Option(help="Output folder; an existing one is resumed.")],
    val: Annotated[Optional[Path], typer.Option(help="Validation cohort: F1 thresholds are chosen on it.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="First N test patients (overrides the config).")] = None,
    only: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Run and report only these checkpoints' arms, or arms whose name matches this glob (repeatable; the reference arm must be included). For staged runs."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run a comparison: predictions per arm (resumable), baselines, CIs, DeLong tests, plots, report."""
    from icl_toolkit.evaluation.compare import compare as run_comparison
    from icl_toolkit.evaluation.compare import load_compare_config

    cfg, _ = load_compare_config(config)
    result = run_comparison(cfg, test, pool, out, val=val, limit=limit, only=only or (), progress=progress)
    table = Table(
        title=f"{result.rows[0]['n']} test patients, {result.rows[0]['cases']} cases; "
        f"DeLong against {cfg.reference_arm!r}",
        title_justify="left",
    )
    for col in ("arm", "AUROC (95% CI)", "AUPRC", "Brier", "ECE", "F1", "p"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in result.rows:
        p = "ref" if r["p_value"] is None else f"{r['p_value']:.3f}"
        table.add_row(
            r["name"] if r["kind"] == "arm" else f"[dim]{r['name']}[/]",
            f"{r['auroc']:.3f} ({r['auroc_lo']:.3f}-{r['auroc_hi']:.3f})",
            f"{r['auprc']:.3f}",
            f"{r['brier']:.3f}",
            f"{r['ece']:.3f}",
            f"{r['f1']:.3f}",
            p,
        )
    console.print(table)
    causes = {r["threshold_from"] for r in result.rows if r["threshold_from"] != "validation" and val is not None}
    for cause in sorted(causes):
        err_console.print(f"warning: F1 at a {cause} (the thresholds of the model cards say so too).", highlight=False)
    for ct in result.contrasts:
        console.print(
            f"{ct['a']} vs {ct['b']}: AUROC {ct['auroc_a']:.3f} vs {ct['auroc_b']:.3f}, difference "
            f"{ct['difference']:+.3f} (95% CI {ct['lo']:+.3f} to {ct['hi']:+.3f}), DeLong p = "
            f"{ct['p_value']:.3g}; detectable at 80% power: {ct['detectable_80']:.3f}",
            highlight=False,
        )
    done = f"{len(result.ran)} arms predicted" + (f", {len(result.skipped)} already complete" if result.skipped else "")
    console.print(f"{done}; wrote {result.out}/results.csv, results.md, report.md and plots", highlight=False)
