"""``icl monitor``: windowed report and alerts over the log of ``icl serve --monitor-dir``."""

from __future__ import annotations

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
            help="Reference population for input drift and prevalence (the server's demonstration pool); default: the first window."
        ),
    ] = None,
    alerts: Annotated[
        Optional[Path],
        typer.Option(
            help="Alert thresholds (TOML: psi_max, calibration_max, prevalence_shift_max, auroc_min, gap_max, min_outcomes, min_group_outcomes, min_volume)."
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Folder for monitor.json, monitor.png and index.html (default: DIR/report).")
    ] = None,
    fail_on_alert: Annotated[
        bool, typer.Option(help="Exit with code 3 when any alert fires (for cron jobs and CI).")
    ] = False,
) -> None:
    """Per window: volume, input mix and drift (PSI), mean probability against the observed rate, calibration,
    AUROC and subgroup gaps as outcomes arrive; each against its alert threshold."""
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
    report = monitor_report(dir, span, pool=read_cohort(pool) if pool is not None else None, settings=settings)
    out = out or dir / "report"
    page = write_monitor_page(report, out)
    write_json_atomic(out / "monitor.json", report)
    table = Table(
        title=f"{report['predictions']} predictions, {report['feedback']} outcomes; windows of {window}; "
        f"reference: {report['reference']}"
    )
    for col in (
        "window start",
        "volume",
        "age",
        "women",
        "events",
        "PSI age/events/history",
        "mean p",
        "demo vote",
        "demo sim.",
        "outcomes",
        "observed",
        "AUROC",
    ):
        table.add_column(col, justify="right")

    def f(v: object, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    for w in report["windows"]:
        table.add_row(
            w["start"][:16],
            str(w["volume"]),
            f(w.get("mean_age"), ".1f"),
            f(w.get("female_share"), ".2f"),
            f(w.get("mean_events"), ".0f"),
            "/".join(f(w.get(f"psi_{k}"), ".2f") for k in ("age", "events", "history_days")),
            f(w.get("mean_probability")),
            f(w.get("mean_demo_vote"), ".2f"),
            f(w.get("mean_demo_similarity"), ".2f"),
            str(w.get("outcomes", 0)),
            f(w.get("observed_rate")),
            f(w.get("auroc")),
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
