"""``icl predict``: prompted prediction with retrieved demonstrations, streamed to JSONL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.table import Table

from icl_toolkit.cli._common import (
    ModelOpt,
    console,
    err_console,
    progress_bar,
    spec_from_flags,
    with_engine_flags,
    with_retriever_flags,
)
from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.scale.ray_run import RayOptions
from icl_toolkit.prompting.config import Demos, Mode, Order, RationaleStyle
from icl_toolkit.retrieval.config import Balance, Strategy

OutFormat = Literal["jsonl", "meds"]
RunEngine = Literal["local", "ray"]

def _print_example(record: dict[str, Any]) -> None:
    table = Table(title=f"patient {record['patient_id']}: P(ADRD within window) = {record['probability']:.3f}"
                        + (f", true label {record['label']}" if record["label"] is not None else ""),
                  title_justify="left")
    table.add_column("demo (order shown)")
    table.add_column("similarity", justify="right")
    table.add_column("outcome", justify="right")
    for d in record["demos"]:
        table.add_row(d["patient_id"], f"{d['score']:.3f}", {1: "ADRD", 0: "no ADRD"}.get(d["label"], "?"))
    console.print(table)
    extra = f"prompt {record['prompt_tokens']} tokens, {record['prompt_hash']}, model {record['model_id']}"
    if record["dropped_demos"]:
        extra += f"; dropped to fit: {', '.join(d['patient_id'] for d in record['dropped_demos'])}"
    console.print(extra, highlight=False)
    if record.get("reasoning"):
        console.print(f"reasoning: {record['reasoning'].strip()}", highlight=False)


@with_engine_flags
@with_retriever_flags
def predict(
    cohort: Annotated[Path, typer.Option(help="Patients to predict (cohort JSONL).")],
    out: Annotated[Path, typer.Option(help="Output JSONL, one prediction per patient, appended as they finish.")],
    pool: Annotated[Optional[Path], typer.Option(help="Demonstration pool (cohort JSONL with labels).")] = None,
    index: Annotated[Optional[Path], typer.Option(help="Index folder from `icl index build` (built on the fly if absent).")] = None,
    k: Annotated[int, typer.Option(min=0, help="Demonstrations per patient (0: zero-shot, as --demos none).")] = 4,
    strategy: Annotated[Strategy, typer.Option(help="Demo selection.")] = "similar",
    demos: Annotated[Demos, typer.Option(help="rationale: history+rationale+outcome; label: history+outcome; none: zero-shot.")] = "rationale",
    rationale: Annotated[RationaleStyle, typer.Option(help="Which rationale demos show.")] = "free_text",
    mode: Annotated[Mode, typer.Option(help="score: P(yes) at the answer slot; reason: reasoning first, then score.")] = "score",
    model: ModelOpt = "default",
    threshold: Annotated[float, typer.Option(help="Predicted label is 1 when P(yes) >= threshold.")] = 0.5,
    order: Annotated[Order, typer.Option(help="Demo order in the prompt.")] = "similar-last",
    balance: Annotated[Balance, typer.Option(help="Quotas of --strategy balanced.")] = "half",
    mmr_lambda: Annotated[float, typer.Option(help="Relevance weight of --strategy mmr.")] = 0.7,
    seed: Annotated[int, typer.Option(help="Seed of random selection and random order.")] = 0,
    temporal_guard: Annotated[bool, typer.Option(help="Drop demos whose outcome window ends after the patient's index date.")] = False,
    horizon_years: Annotated[float, typer.Option(help="Outcome window in years.")] = 5.0,
    template: Annotated[Optional[str], typer.Option(help="Prompt template name in prompts/ or a .j2 file (default: by --demos and --mode; a fine-tuned checkpoint reasons with the prompt it was trained on).")] = None,
    demo_tokens: Annotated[int, typer.Option(help="History budget per demo (tokens).")] = 200,
    query_tokens: Annotated[int, typer.Option(help="History budget of the patient (tokens).")] = 400,
    retrieval: Annotated[Optional[Path], typer.Option(help="Retrieval cache JSON: reused when it matches, written otherwise.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Predict only the first N patients.")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Patients scored between two writes to --out.")] = 8,
    show: Annotated[int, typer.Option(min=0, help="Print this many predictions with their demonstrations.")] = 1,
    run_engine: Annotated[RunEngine, typer.Option("--engine", help="local: this process; ray: Ray Data replicas (--out is then a folder of shards with a manifest; needs icl-toolkit[ray]).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="ray: 'auto' joins the cluster this machine is in (ray start); ray://HOST:10001 a remote one; default: a local Ray instance.")] = None,
    replicas: Annotated[int, typer.Option(min=1, help="ray: model replicas scoring at once.")] = 1,
    gpus_per_replica: Annotated[float, typer.Option(min=0.0, help="ray: GPUs per replica (0: CPU).")] = 0.0,
    cpus_per_replica: Annotated[float, typer.Option(min=0.01, help="ray: CPUs per replica.")] = 1.0,
    shard_size: Annotated[int, typer.Option(min=1, help="ray: records per output shard.")] = 256,
    meds_labels: Annotated[Optional[Path], typer.Option(help="ray: --cohort is a MEDS root; this ACES label file (or folder) gives the records, as icl data from-meds reads them.")] = None,
    meds_split: Annotated[Optional[str], typer.Option(help="ray, with --meds-labels: only this MEDS split (train, tuning, held_out).")] = None,
    format: Annotated[OutFormat, typer.Option("--format", help="jsonl: the JSONL records; meds: also <out>.meds.parquet in the meds-evaluation schema (subject_id, prediction_time, boolean_value, predicted_boolean_value, predicted_boolean_probability).")] = "jsonl",
    *,
    engine: EngineOptions,
    retriever_options: dict[str, Any],
) -> None:
    """Predict ADRD onset for each patient with retrieved demonstrations; print metrics when labels are known."""
    from icl_toolkit.inference.run import predict_cohort_file

    config = spec_from_flags(model, k=k, strategy=strategy, balance=balance, mmr_lambda=mmr_lambda, seed=seed,
                             temporal_guard=temporal_guard, horizon_years=horizon_years, demos=demos,
                             rationale=rationale, mode=mode, template=template, order=order, demo_tokens=demo_tokens,
                             query_tokens=query_tokens, max_context=engine.max_context, threshold=threshold,
                             **retriever_options)
    if meds_labels is not None and run_engine != "ray":
        from icl_toolkit.core.errors import ConfigError

        raise ConfigError("--meds-labels reads a MEDS root on Ray replicas (--engine ray); for one process convert "
                          "it first with `icl data from-meds`.")
    if run_engine == "ray":
        _predict_ray(cohort, out, config, model, engine, pool, index, retrieval, format, resume, overwrite, limit,
                     chunk_size, show, meds_labels, meds_split, RayOptions(address=ray_address, replicas=replicas, gpus_per_replica=gpus_per_replica,
                                                  cpus_per_replica=cpus_per_replica, batch_size=chunk_size,
                                                  shard_size=shard_size))
        return
    from icl_toolkit.data.meds.predictions import meds_predictions_path

    meds_path = meds_predictions_path(out) if format == "meds" else None
    start = time.perf_counter()
    records = predict_cohort_file(
        cohort, out, config, model=model, engine=engine, pool=pool, index=index, retrieval=retrieval, resume=resume,
        overwrite=overwrite, limit=limit, chunk_size=chunk_size,
        on_resume=lambda done, todo: err_console.print(f"resuming {out}: {done} done, {todo} to go", highlight=False),
        meds_out=meds_path)
    console.print(f"wrote {len(records)} predictions to {out} in {time.perf_counter() - start:.1f}s", highlight=False)
    if meds_path is not None:
        left = sum(r["label"] is None for r in records)
        console.print(f"wrote {len(records) - left} predictions in the meds-evaluation schema to {meds_path}"
                      + (f"; {left} unlabelled records left out (meds-evaluation needs the label)" if left else ""),
                      highlight=False)
    _report(records, show)


def _report(records: list[dict[str, Any]], show: int) -> None:
    for r in [r for r in records if "error" not in r][:show]:
        _print_example(r)
    labelled = [r for r in records if r.get("label") is not None and "error" not in r]
    if labelled:
        from icl_toolkit.evaluation.metrics import summary

        m = summary([r["label"] for r in labelled], [r["probability"] for r in labelled])
        fmt = {key: ("n/a" if v is None else f"{v:.3f}") for key, v in m.items() if key != "n"}
        console.print(f"n={m['n']}  prevalence={fmt['prevalence']}  AUROC={fmt['auroc']}  "
                      f"AUPRC={fmt['auprc']}  Brier={fmt['brier']}", highlight=False)


def _predict_ray(cohort: Path, out: Path, config: Any, model: str, engine: EngineOptions, pool: Path | None,
                 index: Path | None, retrieval: Path | None, format: str, resume: bool, overwrite: bool,
                 limit: int | None, chunk_size: int, show: int, meds_labels: Path | None, meds_split: str | None,
                 options: RayOptions) -> None:
    from icl_toolkit.core.errors import ConfigError
    from icl_toolkit.scale import predict_ray, read_sharded_records

    if retrieval is not None:
        raise ConfigError("--retrieval (a retrieval cache file) is for --engine local; with --engine ray each "
                          "replica retrieves from the index the driver saves in the output folder.")
    if format != "jsonl":
        raise ConfigError("--format meds is for --engine local for now; convert the shards' records after the run.")
    from icl_toolkit.scale.ray_run import count_records

    total = count_records(cohort, meds_labels, meds_split, limit) if cohort.is_file() or meds_labels else None
    with progress_bar(f"predicting on Ray ({options.replicas} replica{'s' if options.replicas > 1 else ''})",
                      total or 0) as advance:
        stats = predict_ray(cohort, out, config, model=model, engine=engine, pool=pool, index=index,
                            options=options, resume=resume, overwrite=overwrite, limit=limit, advance=advance,
                            meds_labels=meds_labels, meds_split=meds_split, total=total,
                            on_resume=lambda done, todo: err_console.print(f"resuming {out}: {done} done, {todo} to "
                                                                           "go", highlight=False))
    console.print(f"wrote {int(stats['records'])} predictions to {out} ({stats['total']} in its shards, "
                  f"{stats['failed']} failed) in {stats['seconds']:.1f}s on Ray; first results after "
                  f"{stats['first_batch_seconds']:.1f}s", highlight=False)
    _report(read_sharded_records(out), show)
