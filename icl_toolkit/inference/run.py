"""The one resumable run loop under every front end, and ``icl predict`` as a function.

``icl predict``, ``icl rationales generate`` and every arm of ``icl compare`` go through :func:`run_resumable`:
the items not yet in the output are produced chunk by chunk and each chunk is appended as it finishes, under the
output rules of :mod:`icl_toolkit.inference.output`. :func:`predict_to_file` is that loop for a fitted
:class:`~icl_toolkit.inference.predictor.Predictor`; :func:`predict_file` predicts a cohort file into an output,
in this process or on Ray Data replicas.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.progress import progress_bar
from icl_toolkit.inference.output import OutputFile, Record, RunOutput, check_output

__all__ = ["run_resumable", "predict_to_file", "predict_cohort_file", "RunResult"]

T = TypeVar("T")


@dataclass
class RunResult:
    """What :func:`run_resumable` did."""

    output: OutputFile
    done_before: int        # records already in the output (resumed)
    written: int            # records written now

    def records(self) -> list[dict[str, Any]]:
        return self.output.records()


def run_resumable(items: Sequence[T], produce: Callable[[list[T]], Sequence[Any]], output: OutputFile, *,
                  key: Callable[[T], str] = lambda item: item.patient_id,  # type: ignore[attr-defined]
                  chunk_size: int = 8, desc: str = "running", progress: bool = True,
                  prepare: Callable[[list[T]], None] | None = None,
                  on_resume: Callable[[int, int], None] | None = None,
                  advance: Callable[[int], None] | None = None) -> RunResult:
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
                records = produce(todo[start:start + chunk_size])
                output.write(records)
                written += len(records)
                step(len(records))
        output.finish()
    except BaseException:
        output.abort()
        raise
    return RunResult(output, before, written)



def predict_to_file(predictor: Any, patients: Sequence[Any], output: OutputFile, *,
                    retrievals: Mapping[str, Any] | None = None, chunk_size: int = 8, progress: bool = True,
                    advance: Callable[[int], None] | None = None,
                    on_resume: Callable[[int, int], None] | None = None) -> RunResult:
    """:func:`run_resumable` for a fitted :class:`~icl_toolkit.inference.predictor.Predictor`: the patients still to do are
    retrieved for once (unless ``retrievals`` by patient id are given, as ``icl compare`` shares them), then
    scored chunk by chunk into ``output``."""
    from icl_toolkit.retrieval.retriever import Retrieval

    found: dict[str, Any] = dict(retrievals or {})

    def prepare(todo: list[Any]) -> None:
        if retrievals is None:
            found.update((r.query_id, r) for r in predictor.retrieve(todo))

    def produce(chunk: list[Any]) -> Sequence[Any]:
        return predictor.predict_proba(chunk, [found.get(p.patient_id) or Retrieval(p.patient_id) for p in chunk])

    return run_resumable(patients, produce, output, chunk_size=chunk_size, desc="predicting", progress=progress,
                         prepare=prepare, advance=advance, on_resume=on_resume)


def predict_cohort_file(cohort: str | os.PathLike[str], out: str | os.PathLike[str], config: Any, *,
                        model: str = "default", engine: Any = None, pool: str | os.PathLike[str] | None = None,
                        index: str | os.PathLike[str] | None = None,
                        retrieval: str | os.PathLike[str] | None = None, resume: bool = False, overwrite: bool = False,
                        limit: int | None = None, chunk_size: int = 8,
                        on_resume: Callable[[int, int], None] | None = None,
                        meds_out: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """``icl predict`` as a function: the patients of a cohort file predicted into ``out`` with ``config`` (a
    :class:`~icl_toolkit.inference.config.PredictConfig`) by ``model`` on ``engine``; returns the records of those patients.

    Everything that can be checked without loading is checked first (the pool a demo setting needs, the output
    rules), so a mistake costs no model load and touches no file. ``meds_out``: also write the labelled records'
    predictions there in the meds-evaluation schema (:mod:`icl_toolkit.data.meds.predictions`).
    """
    from icl_toolkit.backends.options import open_backend
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.inference.predictor import Predictor

    if pool is None and config.uses_demos:
        raise ConfigError("--pool is required for demonstrations (or use --demos none / --k 0 for zero-shot).")
    if index is not None and pool is None:
        raise ConfigError("--index needs the --pool it was built from (the demos' records come from the pool).")
    inputs = {"--cohort": cohort, "--pool": pool, "--retrieval": retrieval}
    check_output(out, resume=resume, overwrite=overwrite, inputs=inputs)
    patients = read_cohort(cohort)
    if limit:
        patients = patients[:limit]
    demo_pool = read_cohort(pool) if pool is not None else []
    lm = open_backend(model, engine)
    predictor = Predictor(lm, config, retrieval_cache=retrieval).fit(demo_pool, index, pool_name=str(pool))
    output = OutputFile(out, predictor.provenance(patients), resume=resume, overwrite=overwrite, inputs=inputs)
    lm.progress = False
    if meds_out is not None:
        from icl_toolkit.data.meds.predictions import meds_key

        for p in patients:
            meds_key(p)          # a record without a MEDS subject is refused before any scoring
    predict_to_file(predictor, patients, output, chunk_size=chunk_size, on_resume=on_resume)
    wanted = {p.patient_id for p in patients}
    records = [r for r in output.records() if r["patient_id"] in wanted]
    if meds_out is not None:
        from icl_toolkit.data.meds.predictions import write_meds_predictions

        write_meds_predictions(records, patients, meds_out)
    return records
