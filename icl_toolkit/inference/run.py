"""The one resumable run loop under every front end, and ``icl predict`` as a function.

``icl predict``, ``icl rationales generate`` and every arm of ``icl compare`` go through :func:`run_resumable`:
the items not yet in the output are produced chunk by chunk and each chunk is appended as it finishes, under the
output rules of :mod:`icl_toolkit.inference.output`. :func:`predict_to_file` is that loop for a fitted
:class:`~icl_toolkit.inference.predictor.Predictor`; :func:`predict_file` predicts a cohort file into an output,
in this process or on Ray Data replicas.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.progress import progress_bar
from icl_toolkit.data.cohort import Patient
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.inference.output import OutputFile, Record, RunOutput, check_output
from icl_toolkit.inference.predictor import Prediction, Predictor
from icl_toolkit.inference.ray import RayOptions
from icl_toolkit.retrieval.retriever import Retrieval

__all__ = ["run_resumable", "predict_to_file", "predict_file", "PredictRun", "RunResult"]

T = TypeVar("T")


@dataclass
class RunResult:
    """What :func:`run_resumable` did."""

    output: RunOutput
    done_before: int  # records already in the output (resumed)
    written: int  # records written now

    def records(self) -> list[dict[str, Any]]:
        return self.output.records()


def run_resumable(
    items: Sequence[T],
    produce: Callable[[list[T]], Sequence[Record | Mapping[str, Any]]],
    output: RunOutput,
    *,
    key: Callable[[T], str] = lambda item: item.patient_id,  # type: ignore[attr-defined]
    chunk_size: int = 8,
    desc: str = "running",
    progress: bool = True,
    prepare: Callable[[list[T]], None] | None = None,
    on_resume: Callable[[int, int], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> RunResult:
    """Produce records for the items not yet in ``output``, chunk by chunk, appending each chunk as it finishes.

    Args:
        items: what to process (patients); those whose key is already in the output are skipped.
        produce: a chunk of items -> their records (each with a ``patient_id``).
        output: where the records go (see :class:`OutputFile`).
        key: an item's id, as its record's ``patient_id``.
        chunk_size: items per ``produce`` call, and per write.
        desc: the progress bar's label.
        progress: show a progress bar.
        prepare: called once with the items still to do, before the loop (retrieval, with its own bar).
        on_resume: called with (records already done, items to go) when resuming.
        advance: report progress to a caller's bar instead of this function's own.

    Returns:
        What was done; an exception leaves the output as the rules say (the old file, or the chunks written).
    """
    if chunk_size < 1:
        raise ConfigError(f"The 'chunk_size' parameter must be an int >= 1. Got {chunk_size!r} instead.")
    todo = [it for it in items if key(it) not in output.done]
    before = len(output.done)
    if before and on_resume is not None:
        on_resume(before, len(todo))
    written = 0
    try:
        if prepare is not None and todo:
            prepare(todo)
        with progress_bar(desc, len(todo), progress and advance is None) as own:
            step = advance or own
            for start in range(0, len(todo), chunk_size):
                records = produce(todo[start : start + chunk_size])
                output.write(records)
                written += len(records)
                step(len(records))
        output.finish()
    except BaseException:
        output.abort()
        raise
    return RunResult(output, before, written)


def predict_to_file(
    predictor: Predictor,
    patients: Sequence[Patient],
    output: RunOutput,
    *,
    retrievals: Mapping[str, Retrieval] | None = None,
    chunk_size: int = 8,
    progress: bool = True,
    advance: Callable[[int], None] | None = None,
    on_resume: Callable[[int, int], None] | None = None,
) -> RunResult:
    """:func:`run_resumable` for a fitted :class:`~icl_toolkit.inference.predictor.Predictor`: the patients still
    to do are retrieved for once (unless ``retrievals`` by patient id are given, as ``icl compare`` shares them),
    then scored chunk by chunk into ``output``."""
    found: dict[str, Retrieval] = dict(retrievals or {})

    def prepare(todo: list[Patient]) -> None:
        if retrievals is None:
            found.update((r.query_id, r) for r in predictor.retrieve(todo))

    def produce(chunk: list[Patient]) -> Sequence[Prediction]:
        return predictor.predict_proba(chunk, [found.get(p.patient_id) or Retrieval(p.patient_id) for p in chunk])

    return run_resumable(
        patients,
        produce,
        output,
        chunk_size=chunk_size,
        desc="predicting",
        progress=progress,
        prepare=prepare,
        advance=advance,
        on_resume=on_resume,
    )


@dataclass
class PredictRun:
    """What :func:`predict_file` did."""

    records: list[dict[str, Any]]
    """The records of the patients asked for (on Ray: every record in the shard folder)."""
    written: int
    """Records written by this call (the rest were there before: a resumed run)."""
    seconds: float
    """Wall time of the call."""
    output: Path
    """The output file (on Ray: the shard folder)."""
    meds_path: Path | None = None
    """The meds-evaluation parquet file, when asked for."""
    first_batch_seconds: float | None = None
    """On Ray: until the first records came back (the replicas' model loads included)."""

    @property
    def failed(self) -> int:
        """Records that hold an ``error`` instead of a prediction (on Ray, a malformed line or a failed patient)."""
        return sum(1 for r in self.records if "error" in r)


def predict_file(
    cohort: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: PredictConfig | None = None,
    *,
    model: str = "default",
    engine: EngineOptions | None = None,
    pool: str | os.PathLike[str] | None = None,
    index: str | os.PathLike[str] | None = None,
    retrieval: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    chunk_size: int = 8,
    ray: RayOptions | None = None,
    meds_labels: str | os.PathLike[str] | None = None,
    meds_split: str | None = None,
    meds_out: bool = False,
    progress: bool = True,
    on_resume: Callable[[int, int], None] | None = None,
) -> PredictRun:
    """Predict the patients of a cohort file into ``out``, in this process or on Ray Data replicas (``icl predict``
    as a function).

    Everything that can be checked without loading is checked first (the pool a demo setting needs, the output
    rules), so a mistake costs no model load and touches no file. The output follows the rules of
    :mod:`icl_toolkit.inference.output`: resumable, never mixing two settings in one output.

    Args:
        cohort: the patients (cohort JSONL); on Ray with ``meds_labels``, a MEDS root.
        out: the output JSONL file (on Ray: a folder of shards with a manifest).
        config: the prediction's settings (default :class:`PredictConfig` ()); a checkpoint trained by
            ``icl finetune`` gets the prompt it was trained on (:meth:`PredictConfig.for_model`).
        model: ``"default"`` (the embedded SmolLM2-135M-Instruct), a checkpoint or adapter folder, a cached hub
            name.
        engine: the backend and its settings (default: transformers on the CPU).
        pool: the demonstration pool (cohort JSONL with labels); needed when ``config`` shows demonstrations.
        index: an index folder from ``icl index build`` over ``pool`` (built on the fly when absent).
        retrieval: a retrieval cache file, reused when it matches and written otherwise (local runs only).
        resume: continue an interrupted run in ``out``.
        overwrite: replace an existing ``out`` (once the new run has written its first chunk).
        limit: only the first N patients.
        chunk_size: patients scored between two writes (on Ray: per replica call).
        ray: run on Ray Data replicas with these options (``None``: in this process).
        meds_labels: on Ray, ``cohort`` is a MEDS root and this ACES label file (or folder) gives the records.
        meds_split: with ``meds_labels``: only this split.
        meds_out: also write ``<out>.meds.parquet`` in the meds-evaluation schema (local runs only).
        progress: show progress bars.
        on_resume: called with (records done before, patients to go) when a run is resumed.

    Returns:
        What was written (:class:`PredictRun`).

    Raises:
        ConfigError: an argument that cannot work (named as its flag, with the fix), an output that breaks the
            rules, an index or retrieval cache made from other inputs, a record without a MEDS subject.
        CohortValidationError: a cohort or pool file that is not valid (every problem, with file and line).
    """
    from icl_toolkit.backends.options import open_backend
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.data.meds.predictions import meds_key, meds_predictions_path, write_meds_predictions

    config = config or PredictConfig()
    from icl_toolkit.data.task import cohorts_task

    # cohort files stored with another task than the one the prompts ask about are refused
    cohorts_task(
        {"the cohort file": cohort, "the pool file": pool},
        config.prompt.task,
        "the prediction's config (for a cohort's own task: task=read_cohort_task(path))",
    )
    if pool is None and config.uses_demos:
        raise ConfigError("--pool is required for demonstrations (or use --demos none / --k 0 for zero-shot).")
    if index is not None and pool is None:
        raise ConfigError("--index needs the --pool it was built from (the demos' records come from the pool).")
    start = time.perf_counter()
    if ray is not None:  # on Ray: the source opened and counted once, the driver's bar over what comes back
        from icl_toolkit.inference.ray import RaySource, predict_ray, require_ray

        if retrieval is not None:
            raise ConfigError(
                "--retrieval (a retrieval cache file) is for --engine local; with --engine ray each "
                "replica retrieves from the index the driver saves in the output folder."
            )
        if meds_out:
            raise ConfigError("--format meds is for --engine local for now; convert the shards' records after the run.")
        require_ray()
        source = RaySource(Path(cohort), Path(meds_labels) if meds_labels else None, meds_split)
        replicas = f"{ray.replicas} replica{'s' if ray.replicas > 1 else ''}"
        with progress_bar(f"predicting on Ray ({replicas})", source.count(limit), progress) as advance:
            sharded, stats = predict_ray(
                source,
                out,
                config,
                model=model,
                engine=engine,
                pool=pool,
                index=index,
                options=ray,
                resume=resume,
                overwrite=overwrite,
                limit=limit,
                on_resume=on_resume,
                advance=advance,
            )
        return PredictRun(
            sharded.records(),
            stats.records,
            time.perf_counter() - start,
            Path(out),
            first_batch_seconds=stats.first_batch_seconds,
        )
    if meds_labels is not None:
        raise ConfigError(
            "--meds-labels reads a MEDS root on Ray replicas (--engine ray); for one process convert "
            "it first with `icl data from-meds`."
        )
    inputs = {"--cohort": cohort, "--pool": pool, "--retrieval": retrieval}
    check_output(out, resume=resume, overwrite=overwrite, inputs=inputs)
    patients = read_cohort(cohort)
    if limit:
        patients = patients[:limit]
    if meds_out:
        for p in patients:
            meds_key(p)  # a record without a MEDS subject is refused before any scoring
    demo_pool = read_cohort(pool) if pool is not None else []
    lm = open_backend(model, engine, progress=progress)
    predictor = Predictor(lm, config, retrieval_cache=retrieval, progress=progress).fit(
        demo_pool, index, pool_name=str(pool)
    )
    output = OutputFile(out, predictor.provenance(patients), resume=resume, overwrite=overwrite, inputs=inputs)
    lm.progress = False
    result = predict_to_file(predictor, patients, output, chunk_size=chunk_size, progress=progress, on_resume=on_resume)
    wanted = {p.patient_id for p in patients}
    records = [r for r in output.records() if r["patient_id"] in wanted]
    meds_path = None
    if meds_out:
        meds_path = meds_predictions_path(out)
        write_meds_predictions(records, patients, meds_path)
    return PredictRun(records, result.written, time.perf_counter() - start, Path(out), meds_path)
