"""``icl predict``: prompted prediction with retrieved demonstrations, streamed to JSONL."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from icl_toolkit.cli._common import (
    BackendName,
    BackendOpt,
    BatchSizeOpt,
    DeviceOpt,
    DType,
    DTypeOpt,
    GpuMemoryOpt,
    MaxContextOpt,
    ModelOpt,
    ServedModelOpt,
    TensorParallelOpt,
    UrlOpt,
    console,
    engine_options_from,
    err_console,
    flag_error,
    progress_bar,
)
from icl_toolkit.errors import ConfigError


class Strategy(str, Enum):
    similar = "similar"
    balanced = "balanced"
    mmr = "mmr"
    random = "random"


class Demos(str, Enum):
    rationale = "rationale"
    label = "label"
    none = "none"


class Mode(str, Enum):
    score = "score"
    reason = "reason"


class Order(str, Enum):
    similar_last = "similar-last"
    similar_first = "similar-first"
    random = "random"




def _config(**kw: Any) -> Any:
    from icl_toolkit.predict import PredictConfig
    from icl_toolkit.prompting import PromptConfig
    from icl_toolkit.retrieve import RetrievalConfig

    try:
        return PredictConfig(
            retrieval=RetrievalConfig(k=kw["k"], strategy=kw["strategy"], balance=kw["balance"],
                                      mmr_lambda=kw["mmr_lambda"], seed=kw["seed"],
                                      temporal_guard=kw["temporal_guard"], horizon_years=kw["horizon_years"]),
            prompt=PromptConfig(demos=kw["demos"], rationale=kw["rationale"], mode=kw["mode"],
                                template=kw["template"], order=kw["order"], demo_tokens=kw["demo_tokens"],
                                query_tokens=kw["query_tokens"], max_context=kw["max_context"],
                                horizon_years=kw["horizon_years"], seed=kw["seed"]),
            threshold=kw["threshold"])
    except ValidationError as exc:
        raise flag_error(exc) from None


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


def predict(
    cohort: Annotated[Path, typer.Option(help="Patients to predict (cohort JSONL).")],
    out: Annotated[Path, typer.Option(help="Output JSONL, one prediction per patient, appended as they finish.")],
    pool: Annotated[Optional[Path], typer.Option(help="Demonstration pool (cohort JSONL with labels).")] = None,
    index: Annotated[Optional[Path], typer.Option(help="Index folder from `icl index build` (built on the fly if absent).")] = None,
    k: Annotated[int, typer.Option(min=0, help="Demonstrations per patient.")] = 4,
    strategy: Annotated[Strategy, typer.Option(help="Demo selection.")] = Strategy.similar,
    demos: Annotated[Demos, typer.Option(help="rationale: history+rationale+outcome; label: history+outcome; none: zero-shot.")] = Demos.rationale,
    rationale: Annotated[str, typer.Option(help="free_text or stepwise rationales in demos.")] = "free_text",
    mode: Annotated[Mode, typer.Option(help="score: P(yes) at the answer slot; reason: reasoning first, then score.")] = Mode.score,
    model: ModelOpt = "default",
    backend: BackendOpt = BackendName.hf,
    device: DeviceOpt = None,
    batch_size: BatchSizeOpt = None,
    dtype: DTypeOpt = DType.auto,
    gpu_memory_utilization: GpuMemoryOpt = None,
    tensor_parallel_size: TensorParallelOpt = 1,
    url: UrlOpt = None,
    served_model: ServedModelOpt = None,
    threshold: Annotated[float, typer.Option(help="Predicted label is 1 when P(yes) >= threshold.")] = 0.5,
    order: Annotated[Order, typer.Option(help="Demo order in the prompt.")] = Order.similar_last,
    balance: Annotated[str, typer.Option(help="Quotas of --strategy balanced: half or prevalence.")] = "half",
    mmr_lambda: Annotated[float, typer.Option(help="Relevance weight of --strategy mmr.")] = 0.7,
    seed: Annotated[int, typer.Option(help="Seed of random selection and random order.")] = 0,
    temporal_guard: Annotated[bool, typer.Option(help="Drop demos whose outcome window ends after the patient's index date.")] = False,
    horizon_years: Annotated[float, typer.Option(help="Outcome window in years.")] = 5.0,
    template: Annotated[Optional[str], typer.Option(help="Prompt template name in prompts/ or a .j2 file (default: by --demos and --mode; a fine-tuned checkpoint reasons with the prompt it was trained on).")] = None,
    demo_tokens: Annotated[int, typer.Option(help="History budget per demo (tokens).")] = 200,
    query_tokens: Annotated[int, typer.Option(help="History budget of the patient (tokens).")] = 400,
    max_context: MaxContextOpt = None,
    retrieval: Annotated[Optional[Path], typer.Option(help="Retrieval cache JSON: reused when it matches, written otherwise.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Predict only the first N patients.")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Patients scored between two writes to --out.")] = 8,
    show: Annotated[int, typer.Option(min=0, help="Print this many predictions with their demonstrations.")] = 1,
) -> None:
    """Predict ADRD onset for each patient with retrieved demonstrations; print metrics when labels are known."""
    params = dict(locals())  # the flags as given, before any local is added
    from icl_toolkit.backends.options import open_backend
    from icl_toolkit.cohort import read_cohort
    from icl_toolkit.metrics import summary
    from icl_toolkit.predict import PredictionWriter, Predictor

    from icl_toolkit.models import trained_template

    template = template or trained_template(model, mode.value, "none" if k == 0 else demos.value)
    config = _config(k=k, strategy=strategy.value, balance=balance, mmr_lambda=mmr_lambda, seed=seed,
                     temporal_guard=temporal_guard, horizon_years=horizon_years, demos=demos.value,
                     rationale=rationale, mode=mode.value, template=template, order=order.value,
                     demo_tokens=demo_tokens, query_tokens=query_tokens, max_context=max_context, threshold=threshold)
    if pool is None and demos != Demos.none and k > 0:
        raise ConfigError("--pool is required for demonstrations (or use --demos none / --k 0 for zero-shot).")
    if index is not None and pool is None:
        raise ConfigError("--index needs the --pool it was built from (the demos' records come from the pool).")
    start = time.perf_counter()
    patients = read_cohort(cohort)
    if limit:
        patients = patients[:limit]
    demo_pool = read_cohort(pool) if pool is not None else []
    lm = open_backend(model, engine_options_from(params))
    predictor = Predictor(lm, config, retrieval_cache=retrieval).fit(demo_pool, index, pool_name=str(pool))
    writer = PredictionWriter(out, predictor.provenance(patients), resume=resume, overwrite=overwrite)
    todo = [p for p in patients if p.patient_id not in writer.done]
    if writer.done:
        err_console.print(f"resuming {out}: {len(writer.done)} done, {len(todo)} to go", highlight=False)
    retrievals = predictor.retrieve(todo)  # before the bar below: its own progress bar cannot nest in it
    lm.progress = False
    with progress_bar("predicting", len(todo)) as advance:
        for chunk in predictor.iter_predict(todo, chunk_size=chunk_size, retrievals=retrievals):
            writer.write(chunk)
            advance(len(chunk))
    records = [r for r in writer.read_all() if r["patient_id"] in {p.patient_id for p in patients}]
    console.print(f"wrote {len(records)} predictions to {out} in {time.perf_counter() - start:.1f}s", highlight=False)
    for r in records[:show]:
        _print_example(r)
    labelled = [r for r in records if r["label"] is not None]
    if labelled:
        m = summary([r["label"] for r in labelled], [r["probability"] for r in labelled])
        fmt = {key: ("n/a" if v is None else f"{v:.3f}") for key, v in m.items() if key != "n"}
        console.print(f"n={m['n']}  prevalence={fmt['prevalence']}  AUROC={fmt['auroc']}  "
                      f"AUPRC={fmt['auprc']}  Brier={fmt['brier']}", highlight=False)
