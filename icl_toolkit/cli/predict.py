"""``icl predict``: prompted prediction with retrieved demonstrations, streamed to JSONL (or shards on Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.table import Table

from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.cli._common import (
    ModelOpt,
    TaskOpt,
    cohort_task,
    console,
    err_console,
    spec_from_flags,
    with_engine_flags,
    with_ray_flags,
    with_spec_flags,
)
from icl_toolkit.prompting.builder import task_words

OutFormat = Literal["jsonl", "meds"]
RunEngine = Literal["local", "ray"]


def _print_example(record: dict[str, Any], answer: str) -> None:
    table = Table(
        title=f"patient {record['patient_id']}: P({answer}) = {record['probability']:.3f}"
        + (f", true label {record['label']}" if record["label"] is not None else ""),
        title_justify="left",
    )
    table.add_column("demo (order shown)")
    table.add_column("similarity", justify="right")
    table.add_column("outcome", justify="right")
    for d in record["demos"]:
        table.add_row(d["patient_id"], f"{d['score']:.3f}", {1: "Yes", 0: "No"}.get(d["label"], "?"))
    console.print(table)
    extra = f"prompt {record['prompt_tokens']} tokens, {record['prompt_hash']}, model {record['model_id']}"
    if record["dropped_demos"]:
        extra += f"; dropped to fit: {', '.join(d['patient_id'] for d in record['dropped_demos'])}"
    console.print(extra, highlight=False)
    if record.get("reasoning"):
        console.print(f"reasoning: {record['reasoning'].strip()}", highlight=False)


@with_engine_flags
@with_spec_flags
@with_ray_flags
def predict(
    cohort: Annotated[Path, typer.Option(help="Patients to predict (cohort JSONL; with --meds-labels a MEDS root).")],
    out: Annotated[
        Path,
        typer.Option(
            help="Output JSONL, one prediction per patient, appended as they finish (with --engine ray a folder of shards with a manifest)."
        ),
    ],
    pool: Annotated[Optional[Path], typer.Option(help="Demonstration pool (cohort JSONL with labels).")] = None,
    index: Annotated[
        Optional[Path], typer.Option(help="Index folder from `icl index build` (built on the fly if absent).")
    ] = None,
    model: ModelOpt = "default",
    retrieval: Annotated[
        Optional[Path],
        typer.Option(help="Retrieval cache JSON: reused when it matches, written otherwise (--engine local)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Predict only the first N patients.")] = None,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Patients scored between two writes to --out (on Ray: per replica call).")
    ] = 8,
    show: Annotated[int, typer.Option(min=0, help="Print this many predictions with their demonstrations.")] = 1,
    run_engine: Annotated[
        RunEngine,
        typer.Option(
            "--engine",
            help="local: this process; ray: Ray Data replicas (--out is then a folder of shards with a manifest; needs icl-toolkit\\[ray]).",
        ),
    ] = "local",
    meds_labels: Annotated[
        Optional[Path],
        typer.Option(
            help="ray: --cohort is a MEDS root; this ACES label file (or folder) gives the records, as icl data from-meds reads them."
        ),
    ] = None,
    meds_split: Annotated[
        Optional[str], typer.Option(help="ray, with --meds-labels: only this MEDS split (train, tuning, held_out).")
    ] = None,
    format: Annotated[
        OutFormat,
        typer.Option(
            "--format",
            help="jsonl: the JSONL records; meds: also <out>.meds.parquet in the meds-evaluation schema (subject_id, prediction_time, boolean_value, predicted_boolean_value, predicted_boolean_probability).",
        ),
    ] = "jsonl",
    task: TaskOpt = None,
    *,
    engine: EngineOptions,
    spec_options: dict[str, Any],
    ray_options: dict[str, Any],
) -> None:
    """Predict the cohort's task (ADRD onset by default) for each patient with retrieved demonstrations; print
    metrics when labels are known."""
    from icl_toolkit.inference.ray import RayOptions
    from icl_toolkit.inference.run import predict_file

    the_task = cohort_task({"--cohort": cohort, "--pool": pool}, task)
    config = spec_from_flags(model, the_task, max_context=engine.max_context, **spec_options)
    ray = RayOptions(**ray_options, batch_size=chunk_size) if run_engine == "ray" else None
    run = predict_file(
        cohort,
        out,
        config,
        model=model,
        engine=engine,
        pool=pool,
        index=index,
        retrieval=retrieval,
        resume=resume,
        overwrite=overwrite,
        limit=limit,
        chunk_size=chunk_size,
        ray=ray,
        meds_labels=meds_labels,
        meds_split=meds_split,
        meds_out=format == "meds",
        on_resume=lambda done, todo: err_console.print(f"resuming {out}: {done} done, {todo} to go", highlight=False),
    )
    if ray is None:
        console.print(f"wrote {len(run.records)} predictions to {out} in {run.seconds:.1f}s", highlight=False)
    else:
        console.print(
            f"wrote {run.written} predictions to {out} ({len(run.records)} in its shards, {run.failed} "
            f"failed) in {run.seconds:.1f}s on Ray; first results after {run.first_batch_seconds:.1f}s",
            highlight=False,
        )
    if run.meds_path is not None:
        left = sum(r["label"] is None for r in run.records)
        console.print(
            f"wrote {len(run.records) - left} predictions in the meds-evaluation schema to {run.meds_path}"
            + (f"; {left} unlabelled records left out (meds-evaluation needs the label)" if left else ""),
            highlight=False,
        )
    _report(run.records, show, task_words(config.prompt).answer)


def _report(records: list[dict[str, Any]], show: int, answer: str) -> None:
    for r in [r for r in records if "error" not in r][:show]:
        _print_example(r, answer)
    labelled = [r for r in records if r.get("label") is not None and "error" not in r]
    if labelled:
        from icl_toolkit.evaluation.metrics import metrics_warning, summary

        warning = metrics_warning([r["label"] for r in labelled])
        if warning is not None:
            err_console.print(warning, highlight=False)
            return
        m = summary([r["label"] for r in labelled], [r["probability"] for r in labelled])
        fmt = {key: ("n/a" if v is None else f"{v:.3f}") for key, v in m.items() if key != "n"}
        console.print(
            f"n={m['n']}  prevalence={fmt['prevalence']}  AUROC={fmt['auroc']}  "
            f"AUPRC={fmt['auprc']}  Brier={fmt['brier']}",
            highlight=False,
        )
