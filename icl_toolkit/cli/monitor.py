"""``icl monitor``: windowed report and alerts over the log of ``icl serve --monitor-dir``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from icl_toolkit.cli._common import console, err_console


def monitor(
    dir: Annotated[Path, typer.Option("--dir", help="The folder given to `icl serve --monitor-dir`.")],
    window: Annotated[str, typer.Option(help="Window length: 30d, 7d, 12h, 2w, 90m ...")] = "30d",
    pool: Annotated[
        Optional[Path],
        typer.Option(
            help="Reference population for drift and prevalence; default: the pool summary `icl serve` wrote (DIR/reference.json), else the first window."
        ),
    ] = None,
    calibration: Annotated[
        Optional[Path],
        typer.Option(
            help="Predictions with known outcomes (`icl predict` on the validation split): the calibrator of the estimated performance and the reference of prediction drift; default: the first window whose outcomes are complete."
        ),
    ] = None,
    alerts: Annotated[
        Optional[Path],
        typer.Option(
            help="Alert thresholds (a TOML file; keys as on the monitoring page, e.g. auroc_min, input_drift_max, similarity_drop_max)."
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Folder for monitor.json, monitor.png and index.html (default: DIR/report).")
    ] = None,
    as_of: Annotated[
        Optional[datetime],
        typer.Option(help="Report what the log held at this time (UTC when no zone is given); default: now."),
    ] = None,
    fail_on_alert: Annotated[
        bool, typer.Option(help="Exit with code 3 when any alert fires (for cron jobs and CI).")
    ] = False,
) -> None:
    """Per window: volume, estimated performance before outcomes, drift of inputs, predictions and code mix, the
    retrieval signals, and calibration, AUROC and subgroup gaps as outcomes arrive; each against its alert
    threshold."""
    from icl_toolkit.core.artifacts import write_json_atomic
    from icl_toolkit.core.files import load_settings_file
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.evaluation.monitor.report import AlertSettings, monitor_report, parse_window, write_monitor_page

    settings = (
        load_settings_file(
            alerts, AlertSettings, "alert settings", f"Allowed keys: {', '.join(AlertSettings.model_fields)}."
        )
        if alerts is not None
        else AlertSettings()
    )
    span = parse_window(window)
    report = monitor_report(
        dir,
        span,
        pool=read_cohort(pool) if pool is not None else None,
        settings=settings,
        calibration=calibration,
        as_of=as_of.replace(tzinfo=UTC) if as_of is not None and as_of.tzinfo is None else as_of,
    )
    out = out or dir / "report"
    page = write_monitor_page(report, out)
    write_json_atomic(out / "monitor.json", report)
    table = Table(
        title=f"{report['predictions']} predictions, {report['feedback']} outcomes; windows of {window}; "
        f"reference: {report['reference']}; estimates calibrated on {report['calibrated_on']['source']}"
    )
    for col in (
        "window start",
        "n",
        "age",
        "est. AUROC [95%]",
        "AUROC",
        "est. rate",
        "observed",
        "drift age/events/history",
        "pred. drift",
        "codes shifted",
        "unseen",
        "vocab",
        "domain AUROC",
        "sim. drop",
        "vote shift",
    ):
        table.add_column(col, justify="right")

    def f(v: object, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    for w in report["windows"]:
        est = f(w.get("estimated_auroc"))
        if w.get("estimated_auroc_lo") is not None:
            est += f" [{w['estimated_auroc_lo']:.2f}-{w['estimated_auroc_hi']:.2f}]"
        table.add_row(
            w["start"][:10],
            str(w["volume"]),
            f(w.get("mean_age"), ".1f"),
            est,
            f(w.get("auroc")),
            f(w.get("estimated_rate")),
            f(w.get("observed_rate")),
            "/".join(f(w.get(f"drift_{k}"), ".2f") for k in ("age", "events", "history_days")),
            f(w.get("prediction_drift"), ".2f"),
            f(w.get("shifted_codes"), "d"),
            f(w.get("unseen_share"), ".1%"),
            f(w.get("vocabulary_distance"), ".2f"),
            f(w.get("domain_auroc"), ".2f"),
            f(w.get("similarity_drop"), ".2f"),
            f(w.get("demo_vote_shift"), "+.2f"),
        )
    console.print(table)
    if report["unreadable_lines"]:
        err_console.print(
            f"skipped {report['unreadable_lines']} unreadable log line(s) (a write cut off by a stopped server)",
            highlight=False,
        )
    for a in report["alerts"]:
        console.print(f"[bold red]ALERT[/] window {a['window']} ({a['start'][:10]}): {a['message']}", highlight=False)
    if not report["alerts"]:
        console.print("no alerts", highlight=False)
    console.print(f"wrote {out / 'monitor.json'} and {page}", highlight=False)
    if fail_on_alert and report["alerts"]:
        raise typer.Exit(3)
