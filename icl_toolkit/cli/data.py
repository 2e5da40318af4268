"""``icl data``: make, check, describe and split cohort files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from icl_toolkit.cli._common import console, err_console, progress_bar
from icl_toolkit.cohort import read_cohort, validate_cohort, write_cohort
from icl_toolkit.describe import describe_cohort, oracle_auroc, plot_cohort
from icl_toolkit.synth import SynthConfig, assign_splits, iter_synthetic_patients, parse_split

app = typer.Typer(help="Make, check, describe and split cohort files (JSONL, one patient per line).",
                  no_args_is_help=True)


@app.command()
def synth(
    n: Annotated[int, typer.Option("--n", min=1, help="Number of patients.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same cohort.")] = 0,
    out: Annotated[Path, typer.Option(help="Output JSONL file.")] = Path("cohort.jsonl"),
    split: Annotated[Optional[str], typer.Option(help="Fractions per split, e.g. train=0.7,val=0.1,test=0.2.")] = None,
    prevalence: Annotated[float, typer.Option(help="Target mean 5-year ADRD risk.")] = 0.15,
    rationales: Annotated[bool, typer.Option(help="Write free-text and step-by-step rationales.")] = True,
) -> None:
    """Synthesise an ADRD cohort with known risk and grounded rationales."""
    config = SynthConfig(n=n, seed=seed, prevalence=prevalence, rationales=rationales,
                         split=parse_split(split) if split else None)
    start = time.perf_counter()
    with progress_bar("synthesising patients", n) as advance:
        patients = list(iter_synthetic_patients(config, progress=advance))
    write_cohort(patients, out)
    ys = [p.label for p in patients]
    auc = oracle_auroc(patients)
    auc_text = f"{auc:.3f}" if auc is not None else "n/a"
    console.print(f"wrote {len(patients)} patients to {out} in {time.perf_counter() - start:.1f}s: "
                  f"prevalence {sum(ys) / len(ys):.3f}, oracle AUROC {auc_text}", highlight=False, soft_wrap=True)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Cohort JSONL file.")],
    max_shown: Annotated[int, typer.Option(help="Print at most this many problems (0: all).")] = 0,
) -> None:
    """Check a cohort file and list every problem as FILE:LINE: field: message."""
    report = validate_cohort(file)
    shown = report.issues if max_shown <= 0 else report.issues[:max_shown]
    for issue in shown:
        err_console.print(str(issue), highlight=False, markup=False, soft_wrap=True)
    if len(shown) < len(report.issues):
        err_console.print(f"... {len(report.issues) - len(shown)} more", highlight=False)
    if report.issues:
        bad_lines = len({i.line for i in report.issues})
        err_console.print(f"{file}: {len(report.issues)} problem(s) on {bad_lines} line(s); "
                          f"{report.n_valid} of {report.n_records} records valid", highlight=False)
        raise typer.Exit(1)
    extra = (f"; {report.n_events_after_index} events dated after their index date "
             "(kept in the file, never shown to a model)") if report.n_events_after_index else ""
    console.print(f"{file}: {report.n_records} patients, no problems{extra}", highlight=False)


def _fmt(d: dict | None, digits: int = 1) -> str:
    if not d:
        return "-"
    return (f"mean {d['mean']:.{digits}f}, median {d['median']:.{digits}f}, "
            f"p10-p90 {d['p10']:.{digits}f}-{d['p90']:.{digits}f}, max {d['max']:.{digits}f}")


@app.command()
def stats(
    file: Annotated[Path, typer.Argument(help="Cohort JSONL file.")],
    tokens: Annotated[bool, typer.Option(help="Count tokens (default model and embedder).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw age, true risk, events and history length by outcome to this PNG.")] = None,
) -> None:
    """Size, prevalence, oracle AUROC, events per patient, history and rationale lengths."""
    patients = read_cohort(file)
    if tokens:
        with progress_bar("counting tokens", len(patients)) as advance:
            s = describe_cohort(patients, tokens=True, progress=advance)
    else:
        s = describe_cohort(patients, tokens=False)
    if plot is not None:
        plot_cohort(patients, str(plot), s)
        err_console.print(f"wrote {plot}", highlight=False)
    if as_json:
        console.print_json(json.dumps(s))
        return
    t = Table(title=f"{file}", show_header=False)
    t.add_column("statistic", style="bold")
    t.add_column("value")
    t.add_row("patients", f"{s['n']} ({s['n_labelled']} labelled, {s['n_positive']} positive)")
    t.add_row("prevalence", f"{s['prevalence']:.3f}" if s["prevalence"] is not None else "-")
    t.add_row("oracle AUROC (true risk)", f"{s['oracle_auroc']:.3f}" if s["oracle_auroc"] is not None else "- (no true risk)")
    for name, sp in s["splits"].items():
        prev = f", prevalence {sp['prevalence']:.3f}" if sp["prevalence"] is not None else ""
        t.add_row(f"split {name}", f"{sp['n']}{prev}")
    t.add_row("female", f"{s['female_fraction']:.1%}")
    t.add_row("age at index", _fmt(s["age_at_index"]))
    t.add_row("events per patient", _fmt(s["events_per_patient"], 0))
    t.add_row("history years", _fmt(s["history_years"]))
    if s["events_after_index"]:
        t.add_row("events after index (never shown)", str(s["events_after_index"]))
    if "history_tokens" in s:
        t.add_row("history tokens (default LM)", _fmt(s["history_tokens"], 0))
        t.add_row("profile tokens (embedder)", _fmt(s["profile_tokens"], 0)
                  + f"; {s['profiles_shortened']} shortened to fit 256")
    t.add_row("with rationales", str(s["n_with_rationales"]))
    for kind in ("free_text", "stepwise"):
        if s["rationale_words"][kind]:
            t.add_row(f"rationale {kind} words", _fmt(s["rationale_words"][kind], 0))
        if "rationale_tokens" in s and s["rationale_tokens"][kind]:
            t.add_row(f"rationale {kind} tokens", _fmt(s["rationale_tokens"][kind], 0))
    console.print(t)


@app.command("split")
def split_cmd(
    file: Annotated[Path, typer.Argument(help="Cohort JSONL file.")],
    out_dir: Annotated[Path, typer.Option(help="Folder for train.jsonl, val.jsonl, test.jsonl.")],
    split: Annotated[Optional[str], typer.Option(help="Fractions when records carry no split, e.g. train=0.7,val=0.1,test=0.2.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for assigning splits.")] = 0,
) -> None:
    """Write one file per split (patient-disjoint), using the records' split field or new stratified ones."""
    patients = read_cohort(file)
    missing = [p for p in patients if p.split is None]
    if missing or split:
        fractions = parse_split(split or "train=0.7,val=0.1,test=0.2")
        for p, name in zip(patients, assign_splits([p.label for p in patients], fractions, seed)):
            p.split = name
    for name in ("train", "val", "test"):
        group = [p for p in patients if p.split == name]
        if group:
            n = write_cohort(group, out_dir / f"{name}.jsonl")
            console.print(f"{out_dir / f'{name}.jsonl'}: {n} patients", highlight=False)
