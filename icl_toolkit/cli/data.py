"""``icl data``: make, check, describe and split cohort files."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional, cast

import typer
from rich.table import Table

from icl_toolkit.cli._common import console, err_console, flag_error, progress_bar
from icl_toolkit.cli._flags import FlagGroup, with_flags
from icl_toolkit.core.artifacts import write_json_atomic
from icl_toolkit.data.cohort import SplitName, read_cohort, validate_cohort, write_cohort
from icl_toolkit.data.describe import describe_cohort, group_summary, oracle_auroc, plot_cohort
from icl_toolkit.data.summary import ImportSummary
from icl_toolkit.data.synth import SynthConfig, assign_splits, iter_synthetic_patients, parse_split
from icl_toolkit.data.synth.generate import parse_disparity
from icl_toolkit.data.synth.risk import Signal
from icl_toolkit.data.task import (
    ADRD,
    Task,
    copy_cohort_task,
    load_task,
    read_cohort_task,
    task_file,
    write_cohort_task,
)
from icl_toolkit.prompting.config import PromptConfig

app = typer.Typer(
    help="Make, check, describe and split cohort files (JSONL, one patient per line).", no_args_is_help=True
)


TaskFileOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Task file (TOML, JSON, or an ACES task YAML with a question line): name, question, ... "
        "Stored beside the cohort as <out>.task.json; every prompt asks its question. Default: ADRD onset."
    ),
]


def _load_task(given: Path | None) -> Task:
    """The ``--task`` file's task, else ADRD (read before an import, so that a bad file fails first)."""
    return load_task(given) if given is not None else ADRD


def _write_task(out: Path, task: Task, given: bool) -> None:
    """Store ``task`` beside the cohort; say which it is (``given``: it came from ``--task``)."""
    path = write_cohort_task(out, task)
    console.print(
        f"task {task.name}: {task.words(f'{task.horizon_years or 5:g}')['question']} (in {path})"
        + ("" if given else "; give --task FILE for another task's question"),
        highlight=False,
    )


@app.command()
def synth(
    n: Annotated[int, typer.Option("--n", min=1, help="Number of patients.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same cohort.")] = 0,
    out: Annotated[Path, typer.Option(help="Output JSONL file.")] = Path("cohort.jsonl"),
    split: Annotated[Optional[str], typer.Option(help="Fractions per split, e.g. train=0.7,val=0.1,test=0.2.")] = None,
    prevalence: Annotated[float, typer.Option(help="Target mean 5-year ADRD risk.")] = 0.15,
    rationales: Annotated[bool, typer.Option(help="Write free-text and step-by-step rationales.")] = True,
    disparity: Annotated[
        Optional[str],
        typer.Option(
            help="Add an access-to-care disparity: 'default', or KEY=VALUE pairs of share (0.3), visit_factor (0.5), "
            "coding_factor (0.6), delay_years (1) and attribute (access). The limited group has the same true "
            "risk but fewer visits, under-coding and later coding; groups and per-group oracle AUROC go to "
            "OUT.groups.json."
        ),
    ] = None,
    signal: Annotated[
        Signal,
        typer.Option(
            help="Where the outcome's signal lives: 'presence' (which conditions a patient has; the cohort of every "
            "earlier release, byte for byte) or 'trajectory' (also how the history unfolds: a cognitive score and "
            "BMI falling across visits, visits getting denser, memory complaints before falls)."
        ),
    ] = "presence",
) -> None:
    """Synthesise an ADRD cohort with known risk and grounded rationales."""
    config = SynthConfig(
        n=n,
        seed=seed,
        prevalence=prevalence,
        rationales=rationales,
        split=parse_split(split) if split else None,
        disparity=parse_disparity(disparity) if disparity is not None else None,
        signal=signal,
    )
    start = time.perf_counter()
    with progress_bar("synthesising patients", n) as advance:
        patients = list(iter_synthetic_patients(config, progress=advance))
    write_cohort(patients, out)
    write_cohort_task(out, ADRD)
    ys = [p.label or 0 for p in patients]  # the generator labels every patient
    auc = oracle_auroc(patients)
    auc_text = f"{auc:.3f}" if auc is not None else "n/a"
    console.print(
        f"wrote {len(patients)} patients to {out} in {time.perf_counter() - start:.1f}s: "
        f"prevalence {sum(ys) / len(ys):.3f}, oracle AUROC {auc_text}",
        highlight=False,
        soft_wrap=True,
    )
    if config.disparity is not None:
        from dataclasses import asdict

        rows = group_summary(patients)
        groups_file = out.with_name(out.name + ".groups.json")
        write_json_atomic(groups_file, {"disparity": asdict(config.disparity), "groups": rows})
        for r in rows:
            console.print(
                f"  {r['attribute']}={r['value']}: {r['n']} patients, prevalence {r['prevalence']:.3f}, "
                f"{r['events_per_patient']:.0f} events and {r['visits_per_patient']:.1f} visits per patient, "
                f"oracle AUROC {r['oracle_auroc'] if r['oracle_auroc'] is not None else 'n/a'}",
                highlight=False,
            )
        console.print(f"wrote {groups_file}", highlight=False)


@app.command()
@with_flags("pool_prompt", FlagGroup(PromptConfig, fields=("demos", "rationale"), prefix="with --pool: "))
def validate(
    file: Annotated[Path, typer.Argument(help="Cohort JSONL file.")],
    max_shown: Annotated[int, typer.Option(help="Print at most this many problems (0: all).")] = 0,
    pool: Annotated[
        bool,
        typer.Option(
            "--pool",
            help="Also check what a demonstration pool needs: every patient labelled, both outcomes present, and the rationales --demos rationale shows.",
        ),
    ] = False,
    *,
    pool_prompt: PromptConfig,
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
        err_console.print(
            f"{file}: {len(report.issues)} problem(s) on {bad_lines} line(s); "
            f"{report.n_valid} of {report.n_records} records valid",
            highlight=False,
        )
        raise typer.Exit(1)
    extra = (
        (
            f"; {report.n_events_after_index} events dated after their index date "
            "(kept in the file, never shown to a model)"
        )
        if report.n_events_after_index
        else ""
    )
    if pool:
        _check_pool_file(file, pool_prompt)
    task = read_cohort_task(file)  # a bad task file beside the cohort is a problem too (named by load_task)
    console.print(
        f"{file}: {report.n_records} patients, no problems{extra}; task {task.name}"
        + ("" if task_file(file).is_file() else " (the default: no task file beside it)"),
        highlight=False,
    )


def _check_pool_file(file: Path, shown: PromptConfig) -> None:
    """What icl predict would refuse in this file as a pool (exit 1), and a pool of one outcome (a warning)."""
    from icl_toolkit.core.errors import ConfigError
    from icl_toolkit.inference.predictor import check_pool

    patients = read_cohort(file)
    try:
        check_pool(patients, shown, str(file))
    except ConfigError as exc:
        err_console.print(f"not usable as a pool: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    cases = sum(p.label == 1 for p in patients)
    if cases in (0, len(patients)):
        err_console.print(
            f"warning: {file}: every pool patient has the same outcome ({cases} cases of "
            f"{len(patients)}); the demonstrations can teach nothing and the prognostic retriever "
            "cannot be fitted.",
            highlight=False,
        )


def _fmt(d: dict | None, digits: int = 1) -> str:
    if not d:
        return "-"
    return (
        f"mean {d['mean']:.{digits}f}, median {d['median']:.{digits}f}, "
        f"p10-p90 {d['p10']:.{digits}f}-{d['p90']:.{digits}f}, max {d['max']:.{digits}f}"
    )


@app.command()
def stats(
    file: Annotated[Path, typer.Argument(help="Cohort JSONL file.")],
    tokens: Annotated[bool, typer.Option(help="Count tokens (default model and embedder).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    plot: Annotated[
        Optional[Path], typer.Option(help="Also draw age, true risk, events and history length by outcome to this PNG.")
    ] = None,
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
    t.add_row(
        "oracle AUROC (true risk)", f"{s['oracle_auroc']:.3f}" if s["oracle_auroc"] is not None else "- (no true risk)"
    )
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
        t.add_row(
            "profile tokens (embedder)",
            _fmt(s["profile_tokens"], 0) + f"; {s['profiles_shortened']} shortened to fit 256",
        )
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
    split: Annotated[
        Optional[str], typer.Option(help="Fractions when records carry no split, e.g. train=0.7,val=0.1,test=0.2.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for assigning splits.")] = 0,
) -> None:
    """Write one file per split (subject-disjoint), using the records' split field or new stratified ones."""
    patients = read_cohort(file)
    missing = [p for p in patients if p.split is None]
    if missing or split:
        fractions = parse_split(split or "train=0.7,val=0.1,test=0.2")
        # by subject: the records of one subject (several prediction times) land in one split
        subjects: dict[str, list[Any]] = {}
        for p in patients:
            subjects.setdefault(p.subject_id, []).append(p)
        labels = [max((r.label for r in recs if r.label is not None), default=None) for recs in subjects.values()]
        for recs, name in zip(subjects.values(), assign_splits(labels, fractions, seed)):
            for p in recs:
                p.split = name
    for name in ("train", "val", "test"):
        group = [p for p in patients if p.split == name]
        if group:
            n = write_cohort(group, out_dir / f"{name}.jsonl")
            copy_cohort_task(file, out_dir / f"{name}.jsonl")  # a split answers the cohort's task
            console.print(f"{out_dir / f'{name}.jsonl'}: {n} patients", highlight=False)


@app.command("from-omop")
def from_omop(
    source: Annotated[
        Path, typer.Option(help="A folder of OMOP CDM CSV files (PERSON.csv, ...) or a DuckDB / SQLite database file.")
    ],
    out: Annotated[Path, typer.Option(help="Output cohort JSONL file; a summary goes beside it (<out>.summary.json).")],
    window_years: Annotated[float, typer.Option(help="Prediction window after the index date, in years.")] = 5.0,
    min_age: Annotated[float, typer.Option(help="Age at the index date, at least.")] = 60.0,
    min_history_years: Annotated[
        float, typer.Option(help="Continuous observation before the index date, at least (years).")
    ] = 1.0,
    index_date: Annotated[
        str,
        typer.Option(
            help="'first-eligible' (first date meeting --min-age and --min-history-years) or 'fixed:YYYY-MM-DD' (the same date for everyone)."
        ),
    ] = "first-eligible",
    outcome: Annotated[
        Optional[Path],
        typer.Option(
            help="Outcome concept set as TOML/JSON (fields: name, snomed_codes, concept_ids, icd10_prefixes, include_descendants); default ADRD."
        ),
    ] = None,
    as_of: Annotated[
        Optional[str],
        typer.Option(help="Data extraction date YYYY-MM-DD; records dated after it are dropped (default today)."),
    ] = None,
    keep_outside_observation: Annotated[
        bool, typer.Option(help="Keep events dated outside every observation period (dropped by default).")
    ] = False,
    split: Annotated[
        Optional[str], typer.Option(help="Also assign splits, e.g. train=0.7,test=0.3 (stratified by label).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for --split.")] = 0,
    task: TaskFileOpt = None,
) -> None:
    """Build a cohort from OMOP CDM tables: index date, outcome label, history before the index date."""
    import datetime as dt

    from pydantic import ValidationError

    from icl_toolkit.core.artifacts import base_meta, write_json_atomic
    from icl_toolkit.core.errors import ConfigError
    from icl_toolkit.data.omop import IndexRule, OmopConfig, load_outcome, open_source, prepare_cohort

    try:
        as_of_date = dt.date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise ConfigError(f"--as-of: expected a date YYYY-MM-DD (got {as_of!r}).") from None
    given = {"outcome": load_outcome(outcome) if outcome else None, "as_of": as_of_date}
    try:
        config = OmopConfig(
            window_years=window_years,
            keep_outside_observation=keep_outside_observation,
            index=IndexRule(rule=index_date, min_age=min_age, min_history_years=min_history_years),
            **{k: v for k, v in given.items() if v is not None},
        )
    except ValidationError as exc:
        raise flag_error(exc, {"rule": "--index-date"}) from None
    fractions = parse_split(split) if split else None
    the_task = _load_task(task)
    start = time.perf_counter()
    with open_source(source) as src:
        with err_console.status(f"reading {source}"):
            cohort = prepare_cohort(src, config)
        summary = cohort.summary
        splits = assign_splits(cohort.labels, fractions, seed) if fractions else None

        def patients() -> Iterator[Any]:
            for i, p in enumerate(cohort):
                if splits is not None:
                    p.split = cast(SplitName, splits[i])
                advance()
                yield p

        with progress_bar("writing patients", len(cohort)) as advance:
            write_cohort(patients(), out)
    summary_path = out.with_name(out.name + ".summary.json")
    _write_task(out, the_task, task is not None)
    write_json_atomic(
        summary_path,
        {
            "meta": {**base_meta("omop-cohort"), "config": config.model_dump(mode="json"), "task": the_task.name},
            "summary": summary.as_dict(),
        },
    )
    print_import_summary(summary, out, time.perf_counter() - start, summary_path)


def print_import_summary(s: ImportSummary, out: Path, seconds: float, summary_path: Path) -> None:
    """An importer's summary as the console shows it, the same for every importer: the rows of each table read,
    kept, dropped and repaired (why), what the reader noted, the records left out (why), what was written."""
    t = Table(title=f"Rows read from {s.source}" + (f" (split {s.split})" if s.split else ""))
    for col in ("table", "rows", "kept", "dropped (why)", "repaired"):
        t.add_column(col, overflow="fold")
    for name, r in s.tables.items():
        dropped = "; ".join(f"{n} {why}" for why, n in sorted(r.dropped.items(), key=lambda kv: -kv[1]))
        if r.rejected:
            dropped = "; ".join(x for x in (f"{r.rejected} unreadable lines", dropped) if x)
        t.add_row(
            name,
            str(r.read + r.rejected),
            str(r.kept),
            dropped or "-",
            "; ".join(f"{n} {why}" for why, n in r.repaired.items()) or "-",
        )
    console.print(t)
    if s.missing_tables:
        console.print(f"tables not present (skipped): {', '.join(s.missing_tables)}", highlight=False)
    for line in s.notes:
        err_console.print(f"note: {line}", highlight=False, markup=False)
    if s.unknown_codes:
        top = ", ".join(f"{c} ({n})" for c, n in s.unknown_codes.most_common(8))
        console.print(
            f"{sum(s.unknown_codes.values())} rows of {len(s.unknown_codes)} codes of no known vocabulary kept as "
            f"generic events (observation, or lab with a value), most common: {top}; refine them with --code-map",
            highlight=False,
            markup=False,
        )
    if s.casts:
        console.print(
            "read as the MEDS schema's types: "
            + "; ".join(f"{what} ({n} file{'s' if n != 1 else ''})" for what, n in s.casts.items()),
            highlight=False,
            markup=False,
        )
    o = s.outcome
    if o:
        routes = ", ".join(f"{n} by {r}" for r, n in o["records_by_route"].items()) or "none"
        console.print(
            f"outcome {o['name']}: {o['standard_concepts']} standard concepts ({o['with_descendants']} "
            f"with descendants), {o['icd10_source_concepts']} ICD-10 source concepts; {o['records']} "
            f"records ({routes}) for {o['persons_with_a_record']} persons",
            highlight=False,
        )
    a = Table(title=f"Cohort: {s.subjects} subjects")
    a.add_column("step")
    a.add_column("records", justify="right")
    for why, n in sorted(s.attrition.items(), key=lambda kv: -kv[1]):
        a.add_row(f"left out: {why}", str(n))
    a.add_row("cases (label 1)", str(s.cases))
    if s.cases:
        a.add_row("  with an outcome date", str(s.cases_dated))
    a.add_row("controls (label 0)", str(s.controls))
    if s.unlabelled:
        a.add_row("unlabelled", str(s.unlabelled))
    console.print(a)
    events = ", ".join(f"{k} {n}" for k, n in sorted(s.events_written.items(), key=lambda kv: -kv[1]))
    console.print(
        f"events written (on or before each index date): {events or 'none'}; "
        f"{s.events_after_index} later events left out"
        + (f"; {s.no_history} patients have no events before the index date" if s.no_history else ""),
        highlight=False,
    )
    console.print(
        f"wrote {s.records} records of {s.subjects} subjects ({s.cases} cases, {s.controls} controls"
        + (f", {s.unlabelled} unlabelled" if s.unlabelled else "")
        + (f", {s.censored} censored left out" if s.censored else "")
        + f") to {out} in {seconds:.1f}s; summary in {summary_path}",
        highlight=False,
    )


@app.command("from-meds")
def from_meds(
    root: Annotated[
        Path, typer.Option(help="MEDS root: data/**/*.parquet and metadata/ (codes.parquet, subject_splits.parquet).")
    ],
    labels: Annotated[
        Path, typer.Option(help="ACES label file (subject_id, prediction_time, boolean_value), or a folder of them.")
    ],
    out: Annotated[Path, typer.Option(help="Output cohort JSONL file; a summary goes beside it (<out>.summary.json).")],
    split: Annotated[
        Optional[str],
        typer.Option(
            help="Only subjects of this MEDS split: train, tuning or held_out (from metadata/subject_splits.parquet)."
        ),
    ] = None,
    code_map: Annotated[
        Optional[Path],
        typer.Option(
            help="TOML file mapping more codes and vocabularies to event kinds ([codes], [vocabularies], [static], ignore), or mimic-iv (the map shipped for the MIMIC-IV MEDS ETL); codes no map or vocabulary knows become generic events."
        ),
    ] = None,
    outcome: Annotated[
        Optional[Path],
        typer.Option(
            help="Outcome codes (TOML/JSON: name, icd10_prefixes, snomed_codes, meds_codes), for each case's outcome date (optional: the labels are the truth; without it positives keep no date)."
        ),
    ] = None,
    task: TaskFileOpt = None,
) -> None:
    """Build a cohort from a MEDS dataset and an ACES label file: one record per label row, history up to its prediction time."""
    from icl_toolkit.core.artifacts import base_meta, write_json_atomic
    from icl_toolkit.data.meds import load_code_map, open_meds
    from icl_toolkit.data.omop import load_outcome

    the_task = _load_task(task)
    start = time.perf_counter()
    cohort = open_meds(
        root,
        labels,
        split=split,
        code_map=load_code_map(code_map) if code_map else None,
        outcome=load_outcome(outcome) if outcome else None,
        task=the_task,
    )
    with progress_bar("reading MEDS rows", cohort.total_rows) as advance:
        cohort.progress = advance
        write_cohort(cohort, out)
    s = cohort.summary
    summary_path = out.with_name(out.name + ".summary.json")
    _write_task(out, the_task, task is not None)
    write_json_atomic(
        summary_path,
        {
            "meta": {
                **base_meta("meds-cohort"),
                "root": str(root),
                "labels": str(labels),
                "split": split,
                "code_map": str(code_map) if code_map else None,
                "outcome": str(outcome) if outcome else None,
                "task": the_task.name,
            },
            "summary": s.as_dict(),
        },
    )
    print_import_summary(s, out, time.perf_counter() - start, summary_path)


@app.command("to-meds")
def to_meds(
    cohort: Annotated[Path, typer.Option(help="Cohort JSONL file.")],
    out: Annotated[Path, typer.Option(help="MEDS root to create (data/, metadata/, labels/<task>.parquet).")],
    task: Annotated[str, typer.Option(help="Name of the label file written under <out>/labels/.")] = "adrd_5y",
    labels_out: Annotated[Optional[Path], typer.Option(help="Write the label file here instead.")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Subjects per data shard.")] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing, non-empty --out.")] = False,
) -> None:
    """Write a cohort as a MEDS dataset (data shards, codes, dataset metadata, splits) plus a MEDS label file."""
    from icl_toolkit.data.cohort import content_hash
    from icl_toolkit.data.meds import write_meds

    start = time.perf_counter()
    patients = read_cohort(cohort)
    with progress_bar("writing MEDS", len(patients)) as advance:
        s = write_meds(
            patients,
            out,
            dataset_name=cohort.stem,
            dataset_version=content_hash(patients),
            task=task,
            labels_out=labels_out,
            shard_size=shard_size,
            overwrite=overwrite,
            progress=advance,
        )
    console.print(
        f"wrote {s.subjects} subjects ({s.data_rows} rows in {len(s.shards)} shard"
        f"{'s' if len(s.shards) != 1 else ''}, {s.codes} codes) to {out} and {s.label_rows} labels to "
        f"{s.labels}"
        + (f"; {s.unlabelled_left_out} unlabelled records have no label row" if s.unlabelled_left_out else "")
        + f"; {s.onset_rows_added} onset diagnoses added at the cases' outcome dates "
        f"in {time.perf_counter() - start:.1f}s",
        highlight=False,
    )
