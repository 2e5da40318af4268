"""Past one machine: ``icl predict --engine ray`` and ``icl rationales generate --engine ray`` on Ray Data.

The cohort is read as a Ray dataset of JSONL lines (``ray.data.read_text``), so no process holds it whole. Each
line goes to a replica: a Ray actor that, once at start, opens the model through the toolkit's own backends
(:func:`~icl_toolkit.backends.options.open_backend`: transformers on CPU or GPU, vLLM where installed), reads the
demonstration pool and loads the index the driver built; then, per batch, it retrieves, builds the prompts and
scores them exactly as single-process ``icl predict`` does (the same :class:`~icl_toolkit.inference.predictor.Predictor`),
so probabilities, demonstrations and prompt hashes are the same. ``--replicas N`` actors run at once
(``ray.data.ActorPoolStrategy(size=N)``, each with ``--gpus-per-replica`` GPUs and ``--cpus-per-replica`` CPUs).

Faults: a replica process that dies is restarted by Ray and its batch retried (``max_restarts``,
``max_task_retries``); a record that fails (a malformed line, a prompt that cannot be built or scored) is written
as ``{"patient_id", "error"}`` and the run goes on. Results stream back to the driver, which writes them as
shards with a manifest (:class:`~icl_toolkit.inference.output.ShardedOutput`): ``--resume`` skips every patient in a
listed shard and never writes one twice.

On GPUs with vLLM, ``ray.data.llm`` (``build_processor`` with ``vLLMEngineProcessorConfig``) is Ray's own engine
for replicas; :func:`vllm_processor_config` gives the settings this toolkit's prompts need there (see the README's
scale-out section for what was tested where).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.core.errors import ConfigError, IclError

__all__ = ["INSTALL_HINT", "RayOptions", "require_ray", "predict_ray", "generate_rationales_ray",
           "vllm_processor_config"]

INSTALL_HINT = 'pip install "icl-toolkit[ray]"'
INDEX_DIR = "index"      # the pool's index, built once by the driver, beside the shards


class RayOptions(BaseModel):
    """Where and how wide a Ray run goes (unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None
    """``None``: start a local Ray instance in this process; ``auto``: join the cluster this machine is part of
    (``ray start``); ``ray://HOST:10001``: a remote cluster through Ray Client."""
    replicas: int = Field(1, ge=1)
    """Model replicas (actors) scoring at once."""
    gpus_per_replica: float = Field(0.0, ge=0)
    cpus_per_replica: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    """Records per call of a replica (and per retry when one dies)."""
    shard_size: int = Field(256, ge=1)
    """Records per output shard at most (a shard is also written when the stream pauses)."""
    num_cpus: int | None = Field(None, ge=1)
    """A local instance's CPUs (default: the machine's)."""
    max_restarts: int = Field(3, ge=0)
    """Times Ray restarts a replica that dies; its batch is retried as often."""


def require_ray() -> Any:
    """Import ray (with Ray Data), or raise a one-line error naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise IclError(f"--engine ray needs Ray Data: {INSTALL_HINT}") from None
    return ray


def _parse(line: str) -> tuple[Any, str | None, str]:
    """(patient or None, error or None, id) for one JSONL line, checked by the cohort's record rules."""
    from pydantic import ValidationError

    from icl_toolkit.data.cohort import _PATIENT, _describe, record_issues

    obj, error, pid = _load_line(line)
    if error is not None:
        return None, error, pid
    if not isinstance(obj, dict):
        return None, "not a JSON object (one patient per line)", pid
    problems = [f"{w}: {m}" for w, m in record_issues(obj)]
    try:
        patient = _PATIENT.validate_json(line) if not problems else None
    except ValidationError as exc:
        problems += [": ".join(_describe(e)) for e in exc.errors(include_url=False)]
        patient = None
    return patient, ("; ".join(problems) or None), pid


def _load_line(line: str) -> tuple[Any, str | None, str]:
    """(parsed JSON or None, error or None, id): the record's ``patient_id``, or a hash of the line without one."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return None, f"not a JSON object ({exc})", _line_id(line)
    pid = obj.get("patient_id") if isinstance(obj, dict) else None
    return obj, None, pid if isinstance(pid, str) and pid else _line_id(line)


def _line_id(line: str) -> str:
    import hashlib

    return "line-sha256:" + hashlib.sha256(line.encode()).hexdigest()[:16]


class _Replica:
    """One replica: the model (and for prediction the pool and index) loaded once; ``__call__`` runs a batch.

    ``task`` ``predict``: the records of :meth:`Predictor.predict_proba`; ``rationales``: those of
    :meth:`RationaleTeacher.generate` (an unlabelled patient gets ``{"patient_id", "skipped"}``, as the
    single-process command explains labelled patients only).
    """

    def __init__(self, model: str, engine: dict[str, Any], config: dict[str, Any] | None, pool: str | None,
                 index: str | None, task: str = "predict") -> None:
        from icl_toolkit.backends.options import EngineOptions, open_backend

        backend = open_backend(model, EngineOptions(**engine), progress=False)
        self.task = task
        if task == "rationales":
            from icl_toolkit.rationales.teacher import RationaleTeacher, TeacherConfig

            self.teacher = RationaleTeacher(backend, TeacherConfig.model_validate(config))
            return
        from icl_toolkit.data.cohort import read_cohort
        from icl_toolkit.inference.predictor import Predictor
        from icl_toolkit.inference.config import PredictConfig

        self.predictor = Predictor(backend, PredictConfig.model_validate(config), progress=False).fit(
            read_cohort(pool) if pool else [], index)

    def _run(self, patients: list[Any]) -> list[dict[str, Any]]:
        if self.task == "predict":
            return [p.to_dict() for p in self.predictor.predict_proba(patients)]
        labelled = [p for p in patients if p.label is not None]
        out = [r.to_dict() for r in self.teacher.generate(labelled)] if labelled else []
        return out + [{"patient_id": p.patient_id, "skipped": "no label: a teacher explains known outcomes"}
                      for p in patients if p.label is None]

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[str]]:
        parsed = [_parse(str(line)) for line in batch["text"]]
        out: dict[str, dict[str, Any]] = {}
        good = []
        for patient, error, pid in parsed:
            if error is not None:
                out[pid] = {"patient_id": pid, "error": f"invalid record: {error}"}
            else:
                good.append(patient)
        try:
            records = self._run(good) if good else []
        except Exception:                                   # one bad patient must not sink the batch: one by one
            records = []
            for p in good:
                try:
                    records += self._run([p])
                except Exception as exc:
                    records.append({"patient_id": p.patient_id, "error": f"{type(exc).__name__}: {exc}"})
        for r in records:
            out[r["patient_id"]] = r
        order = [pid for _, _, pid in parsed]
        return {"patient_id": order, "record": [json.dumps(out[pid], separators=(",", ":")) for pid in order]}


def _init(ray: Any, options: RayOptions) -> bool:
    """Start or join Ray; True when this call started it (and should shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False} if options.address is None else {}
    if options.address is None:
        # logical CPUs: the replicas' share plus one for reading and filtering lines, so that N replicas on N
        # cores cannot starve the stage that feeds them (a Ray Data deadlock otherwise)
        need = math.ceil(options.replicas * options.cpus_per_replica) + 1
        kwargs["num_cpus"] = options.num_cpus or max(os.cpu_count() or 1, need)
    ray.init(address=options.address, **kwargs)
    return True


def _stream(ray: Any, cohort: str | os.PathLike[str], done: set[str], actor_kwargs: dict[str, Any],
            options: RayOptions, write: Callable[[list[dict[str, Any]]], None], limit: int | None,
            advance: Callable[[int], None], meds_labels: str | os.PathLike[str] | None = None,
            meds_split: str | None = None) -> dict[str, float]:
    """Read the cohort as a Ray dataset, predict on the replicas, hand records to ``write`` shard by shard."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    ds = _read(ray, cohort, meds_labels, meds_split)
    ds = ds.filter(lambda row: bool(str(row["text"]).strip()))
    if limit:
        ds = ds.limit(limit)
    if done:
        ds = ds.map_batches(_skip_done, fn_kwargs={"done": done}, batch_format="numpy")
    ds = ds.map_batches(
        _Replica, fn_constructor_kwargs=actor_kwargs, batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=options.replicas), num_cpus=options.cpus_per_replica,
        num_gpus=options.gpus_per_replica or None, max_restarts=options.max_restarts,
        max_task_retries=options.max_restarts)
    start = time.perf_counter()
    first: float | None = None
    pending: list[dict[str, Any]] = []
    n = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if first is None:
            first = time.perf_counter() - start
        recs = [json.loads(r) for r in batch["record"]]
        pending += recs
        n += len(recs)
        advance(len(recs))
        while len(pending) >= options.shard_size:
            write(pending[:options.shard_size])
            pending = pending[options.shard_size:]
    if pending:
        write(pending)
    return {"seconds": time.perf_counter() - start, "first_batch_seconds": first or 0.0, "records": n}


def _meds_lines(row: dict[str, Any], root: str, labels: str, split: str | None) -> list[dict[str, str]]:
    """One MEDS data shard's records as JSONL lines (each shard is read by one task, streamed as from-meds does)."""
    from icl_toolkit.data.cohort import patient_to_dict
    from icl_toolkit.data.meds import open_meds

    cohort = open_meds(root, labels, split=split)
    cohort.shards = [Path(row["shard"])]
    return [{"text": json.dumps(patient_to_dict(p), separators=(",", ":"))} for p in cohort]


def _read(ray: Any, cohort: str | os.PathLike[str], meds_labels: str | os.PathLike[str] | None,
          meds_split: str | None) -> Any:
    """The cohort as a Ray dataset of JSONL lines: a cohort file's lines, or a MEDS root's records (one read task
    per data shard, with the label file)."""
    import ray.data

    if meds_labels is None:
        return ray.data.read_text(str(Path(cohort).resolve()))
    from icl_toolkit.data.meds import open_meds

    shards = open_meds(cohort, meds_labels, split=meds_split).shards
    items = ray.data.from_items([{"shard": str(p.resolve())} for p in shards])
    return items.flat_map(_meds_lines, fn_kwargs={"root": str(Path(cohort).resolve()),
                                                  "labels": str(Path(meds_labels).resolve()), "split": meds_split})


def _skip_done(batch: Mapping[str, Any], done: set[str]) -> dict[str, list[str]]:
    return {"text": [str(t) for t in batch["text"] if _load_line(str(t))[2] not in done]}


def count_records(path: str | os.PathLike[str], meds_labels: str | os.PathLike[str] | None = None,
                  meds_split: str | None = None, limit: int | None = None) -> int:
    """Records a run will read: non-blank lines of a cohort file, or label rows of a MEDS task; at most
    ``limit``."""
    if meds_labels is not None:
        from icl_toolkit.data.meds import open_meds

        n = len(open_meds(path, meds_labels, split=meds_split))
    else:
        with open(path, "rb") as fh:
            n = sum(1 for line in fh if line.strip())
    return min(n, limit) if limit else n


def _run(ray: Any, cohort: str | os.PathLike[str], output: Any, actor_kwargs: dict[str, Any], options: RayOptions,
         limit: int | None, on_resume: Callable[[int, int], None] | None, advance: Callable[[int], None] | None,
         meds_labels: str | os.PathLike[str] | None = None, meds_split: str | None = None,
         total: int | None = None) -> dict[str, float]:
    """Report a resume, start (or join) Ray, stream the records into ``output``, finish it, stop what was started.
    ``total``: the records the run reads (after ``limit``), when the caller has counted them already."""
    if output.done and on_resume is not None:
        if total is None:
            total = count_records(cohort, meds_labels, meds_split, limit)
        on_resume(len(output.done), max(total - len(output.done), 0))
    started = _init(ray, options)
    try:
        stats = _stream(ray, cohort, output.done, actor_kwargs, options, output.write, limit,
                        advance or (lambda n: None), meds_labels, meds_split)
        output.finish()
    finally:
        if started:
            ray.shutdown()
    return stats


def predict_ray(cohort: str | os.PathLike[str], out: str | os.PathLike[str], config: Any, *,
                model: str = "default", engine: Any = None, pool: str | os.PathLike[str] | None = None,
                index: str | os.PathLike[str] | None = None, options: RayOptions | None = None,
                resume: bool = False, overwrite: bool = False, limit: int | None = None,
                on_resume: Callable[[int, int], None] | None = None,
                advance: Callable[[int], None] | None = None, meds_labels: str | os.PathLike[str] | None = None,
                meds_split: str | None = None, total: int | None = None) -> dict[str, Any]:
    """``icl predict --engine ray``: the cohort's patients predicted on Ray replicas into the shard folder
    ``out`` (see the module docstring); returns run statistics (records, failures, seconds). ``cohort`` is a
    cohort JSONL file, or a MEDS root read with ``meds_labels`` (an ACES label file; ``meds_split`` keeps one
    split), each data shard by its own task as ``icl data from-meds`` reads it. ``total``: the records it reads
    (:func:`count_records`, after ``limit``) when the caller has counted them for a progress bar; counted here
    only when needed otherwise.

    The driver checks the inputs and the output, builds (or loads and checks) the pool's index once and saves
    it beside the shards, so that every replica loads the same index instead of building its own.
    """
    from icl_toolkit.data.cohort import content_hash
    from icl_toolkit.backends.options import EngineOptions
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.prompting.builder import PromptBuilder
    from icl_toolkit.retrieval.index import DemoIndex
    from icl_toolkit.retrieval.representations import make_representation
    from icl_toolkit.inference.output import ShardedOutput

    ray = require_ray()
    options = options or RayOptions()
    engine = engine or EngineOptions()
    if pool is None and config.uses_demos:
        raise ConfigError("--pool is required for demonstrations (or use --demos none / --k 0 for zero-shot).")
    if index is not None and pool is None:
        raise ConfigError("--index needs the --pool it was built from (the demos' records come from the pool).")
    out = Path(out)
    inputs = {"--cohort": cohort, "--pool": pool}
    if meds_labels is None and not Path(cohort).is_file():
        raise ConfigError(f"{cohort}: not found; check the path (a MEDS root needs --meds-labels).")
    pool_records = read_cohort(pool) if pool is not None else []
    from icl_toolkit.core.models import lm_id, load_tokenizer

    builder = PromptBuilder(load_tokenizer(model), config.prompt, engine.max_context or 1 << 30)
    provenance = {"model_id": lm_id(model), "engine": engine.model_dump(mode="json"),
                  "config": config.model_dump(mode="json"), "templates_hash": builder.templates_hash,
                  "cohort_file": str(Path(cohort).resolve()), "pool_hash": content_hash(pool_records),
                  "meds_labels": str(Path(meds_labels).resolve()) if meds_labels else None, "meds_split": meds_split}
    output = ShardedOutput(out, provenance, resume=resume, overwrite=overwrite, inputs=inputs)
    index_dir = None
    if config.uses_demos:
        index_dir = out / INDEX_DIR if index is None else Path(index)
        if index is None:
            if not _fits(index_dir, pool_records, config.retrieval):
                from icl_toolkit.inference.predictor import _check_pool

                _check_pool(pool_records, config.prompt, str(pool))
                DemoIndex.build(pool_records, make_representation(config.retrieval)).save(index_dir)
        else:       # a given index is checked here, before Ray starts, not in every replica's first batch
            DemoIndex.load(index_dir).check(pool_records, make_representation(config.retrieval),
                                            where=str(index_dir))
    actor_kwargs = {"model": model, "engine": engine.model_dump(), "config": config.model_dump(mode="json"),
                    "pool": str(Path(pool).resolve()) if pool else None,
                    "index": str(index_dir.resolve()) if index_dir else None}
    stats = _run(ray, cohort, output, actor_kwargs, options, limit, on_resume, advance, meds_labels, meds_split,
                 total)
    records = output.records()
    stats |= {"total": len(records), "failed": sum(1 for r in records if "error" in r),
              "done_before": len(records) - int(stats["records"])}
    return stats


def _fits(folder: Path, pool: list[Any], retrieval: Any) -> bool:
    """Whether the run's own index in ``folder`` was built from this pool with these retriever settings. One
    that was not (left by the run an ``--overwrite`` replaces) is rebuilt, never reused."""
    from icl_toolkit.retrieval.index import DemoIndex
    from icl_toolkit.retrieval.representations import make_representation

    if not (folder / DemoIndex.META_FILE).exists():
        return False
    try:
        DemoIndex.load(folder).check(pool, make_representation(retrieval), where=str(folder))
    except ConfigError:
        return False
    return True


def generate_rationales_ray(cohort: str | os.PathLike[str], out: str | os.PathLike[str], config: Any = None, *,
                            model: str = "default", engine: Any = None, options: RayOptions | None = None,
                            drop_ungrounded: bool = False, min_grounded: float = 1.0, limit: int | None = None,
                            resume: bool = False, overwrite: bool = False,
                            on_resume: Callable[[int, int], None] | None = None,
                            advance: Callable[[int], None] | None = None, total: int | None = None) -> Any:
    """``icl rationales generate --engine ray``: the teacher runs on Ray replicas; its generations go to the shard
    folder ``<out>.generations/`` (resumable, exactly once), then the driver writes the cohort with the (grounded)
    rationales to ``out``, as the single-process command does (the same records for the same settings).
    ``total`` as for :func:`predict_ray`."""
    from icl_toolkit.backends.options import EngineOptions
    from icl_toolkit.data.cohort import read_cohort, write_cohort
    from icl_toolkit.core.models import lm_id
    from icl_toolkit.prompting.templates import load_templates
    from icl_toolkit.rationales.teacher import (
        SYSTEM_TEMPLATE,
        USER_TEMPLATE,
        RationaleRun,
        TeacherConfig,
        TeacherRecord,
        apply_rationales,
    )
    from icl_toolkit.inference.output import check_output
    from icl_toolkit.inference.output import ShardedOutput

    ray = require_ray()
    options = options or RayOptions()
    engine = engine or EngineOptions()
    config = config or TeacherConfig()
    out = Path(out)
    if not Path(cohort).is_file():
        raise ConfigError(f"{cohort}: not found; check the path.")
    check_output(out, overwrite=True, kind="cohort", inputs={"--cohort": cohort})
    generations = out.with_name(out.name + ".generations")
    provenance = {"teacher_model": lm_id(model), "engine": engine.model_dump(mode="json"),
                  "teacher_config": config.model_dump(mode="json"),
                  "templates_hash": load_templates(SYSTEM_TEMPLATE, USER_TEMPLATE)[1],
                  "cohort_file": str(Path(cohort).resolve())}
    output = ShardedOutput(generations, provenance, resume=resume, overwrite=overwrite, kind="teacher generations",
                           inputs={"--cohort": cohort})
    actor_kwargs = {"model": model, "engine": engine.model_dump(), "config": config.model_dump(mode="json"),
                    "pool": None, "index": None, "task": "rationales"}
    _run(ray, cohort, output, actor_kwargs, options, limit, on_resume, advance, total=total)
    patients = read_cohort(cohort)
    if limit:
        patients = patients[:limit]
    raw = output.records()
    records = [TeacherRecord.from_dict(r) for r in raw if "texts" in r]
    result, summary = apply_rationales(patients, records, drop_ungrounded=drop_ungrounded, min_grounded=min_grounded)
    write_cohort(result, out)
    return RationaleRun(result, records, summary, sum(1 for p in patients if p.label is not None), generations,
                        failed=[r for r in raw if "error" in r])


def vllm_processor_config(model_source: str, choice_token_ids: list[int], *, replicas: int = 1,
                          tensor_parallel_size: int = 1, batch_size: int = 64, max_model_len: int | None = None
                          ) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]],
                                     Callable[[dict[str, Any]], dict[str, Any]]]:
    """The ``vLLMEngineProcessorConfig`` keyword arguments and the pre/post-processing functions that score a
    built prompt's answer slot on ``ray.data.llm`` replicas (score mode, single-token choices).

    Use: ``build_processor(vLLMEngineProcessorConfig(**kwargs), preprocess=pre, postprocess=post)`` over a
    dataset with a ``prompt`` column (the text :class:`~icl_toolkit.inference.predictor.Predictor` builds). The prompt is
    sent as it is (no chat template, already applied by the toolkit's templates), one token is generated and the
    log-probabilities of the choices' first tokens come back (``logprob_token_ids``, as the toolkit's own vLLM
    backend asks for them); ``post`` turns them into P(yes).
    """
    engine_kwargs: dict[str, Any] = {"tensor_parallel_size": tensor_parallel_size, "enable_prefix_caching": True}
    if max_model_len:
        engine_kwargs["max_model_len"] = max_model_len
    kwargs = {"model_source": model_source, "concurrency": replicas, "batch_size": batch_size,
              "engine_kwargs": engine_kwargs, "apply_chat_template": False, "tokenize": False, "detokenize": False}
    ids = list(choice_token_ids)

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "prompt": row["prompt"],
                "sampling_params": {"max_tokens": 1, "temperature": 0.0, "detokenize": False,
                                    "logprob_token_ids": ids}}

    def post(row: dict[str, Any]) -> dict[str, Any]:
        from icl_toolkit.backends import choice_probabilities

        slot = row["logprobs"][0]
        lps = [float((slot.get(t) or slot.get(str(t)))["logprob"]) for t in ids]
        keep = {k: v for k, v in row.items() if k not in ("logprobs", "sampling_params")}
        return {**keep, "logprobs": lps, "probability": choice_probabilities(lps)[0]}

    return kwargs, pre, post
