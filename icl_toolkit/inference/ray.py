"""Past one machine: a run's patients streamed through Ray Data replicas into shards (``--engine ray``).

The cohort is read as a Ray dataset of JSONL lines (``ray.data.read_text``), so no process holds it whole; a MEDS
root is read shard by shard with its label file, each data shard by its own task, as ``icl data from-meds`` reads
it. Each line goes to a replica: a Ray actor that, once at start, sets up its worker (a model opened through the
toolkit's own backends, with the pool and the index the driver built), then turns each batch of patients into
records exactly as the single-process run does (the same :class:`~icl_toolkit.inference.predictor.Predictor` for
predictions, so probabilities, demonstrations and prompt hashes are the same). ``replicas`` actors run at once
(``ray.data.ActorPoolStrategy(size=N)``, each with ``gpus_per_replica`` GPUs and ``cpus_per_replica`` CPUs).
What a worker does is the caller's: :func:`predict_ray` here, teacher rationales in
:mod:`icl_toolkit.rationales.teacher`.

Faults: a replica process that dies, or a node that leaves the cluster with replicas on it, is restarted by Ray
(``max_restarts`` times) and its batch retried on the restarted replica (``max_task_retries=-1``: a batch waits for
its replica rather than failing while the replica is rescheduled); a record that fails (a malformed line, a prompt
that cannot be built or scored) is written as ``{"patient_id", "error"}`` and the run goes on. Results stream back to the driver, which writes them as shards
with a manifest (:class:`~icl_toolkit.inference.output.ShardedOutput`): resuming skips every patient in a listed
shard and never writes one twice. A run Ray itself gives up on (more failures than restarts, or no node left
that fits a replica) keeps what came back and stops with a one-line error that says to resume.

vLLM replicas: with ``--backend vllm`` each replica opens the toolkit's own vLLM backend (one engine per actor,
``gpus_per_replica`` GPUs each). That is the tested path (``make test-vllm`` runs it on vLLM's CPU build: equal to
the single-process run), chosen over ``ray.data.llm``'s processor because the records then come from the same
:class:`~icl_toolkit.inference.predictor.Predictor` as everywhere else: the same demos, prompt hashes,
provenance, adapters and checkpoints, error records and resume; ``ray.data.llm`` would run the engine call only,
with prompts and records assembled around it a second way. :func:`vllm_processor_config` gives the settings this
toolkit's prompts need in a team's own ``ray.data.llm`` pipeline.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.core.errors import ConfigError, IclError
from icl_toolkit.data.cohort import Patient, parse_record
from icl_toolkit.inference.output import INDEX_DIR, ShardedOutput

if TYPE_CHECKING:
    from icl_toolkit.backends.options import EngineOptions
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.retrieval.representations import PatientRepresentation

__all__ = [
    "INSTALL_HINT",
    "RayOptions",
    "require_ray",
    "RaySource",
    "run_on_ray",
    "predict_ray",
    "vllm_processor_config",
]

INSTALL_HINT = 'pip install "icl-toolkit[ray]"'

Worker = Callable[[list[Patient]], list[dict[str, Any]]]
"""What a replica runs on each batch of valid patients: their records, one per patient with a ``patient_id``."""


class RayOptions(BaseModel):
    """Where and how wide a Ray run goes (validated; unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    address: str | None = None
    """Where Ray runs: unset starts a local Ray instance in this process; ``auto`` joins the cluster this machine
    is part of (``ray start``); ``ray://HOST:10001`` a remote cluster through Ray Client."""
    replicas: int = Field(1, ge=1)
    """Model replicas (actors) working at once."""
    gpus_per_replica: float = Field(0.0, ge=0)
    """GPUs per replica (0: CPU)."""
    cpus_per_replica: float = Field(1.0, gt=0)
    """CPUs per replica."""
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


def _line_id(obj: Any, line: str) -> str:
    """A record's ``patient_id``, or a hash of its line when it has none."""
    pid = obj.get("patient_id") if isinstance(obj, dict) else None
    return pid if isinstance(pid, str) and pid else "line-sha256:" + hashlib.sha256(line.encode()).hexdigest()[:16]


def _parse(line: str) -> tuple[Patient | None, str | None, str]:
    """(patient or None, error or None, id) for one JSONL line, by the cohort file's record rules."""
    patient, problems, obj = parse_record(line)
    error = "; ".join(f"{where}: {what}" if where != "-" else what for where, what in problems) or None
    return patient, error, _line_id(obj, line)


class _Replica:
    """One replica: ``setup(**kwargs)`` once (the model and what else the worker needs), then ``__call__`` per batch
    of lines: malformed lines become error records, the valid patients go to the worker (one by one when the batch
    fails, so that one bad patient does not sink the others)."""

    def __init__(self, setup: Callable[..., Worker], kwargs: dict[str, Any]) -> None:
        self.work = setup(**kwargs)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[str]]:
        parsed = [_parse(str(line)) for line in batch["text"]]
        out: dict[str, dict[str, Any]] = {}
        good = []
        for patient, error, pid in parsed:
            if patient is None:
                out[pid] = {"patient_id": pid, "error": f"invalid record: {error}"}
            else:
                good.append(patient)
        try:
            records = self.work(good) if good else []
        except Exception:  # one bad patient must not sink the batch: one by one
            records = []
            for p in good:
                try:
                    records += self.work([p])
                except Exception as exc:
                    records.append({"patient_id": p.patient_id, "error": f"{type(exc).__name__}: {exc}"})
        for r in records:
            out[r["patient_id"]] = r
        order = [pid for _, _, pid in parsed]
        return {"patient_id": order, "record": [json.dumps(out[pid], separators=(",", ":")) for pid in order]}


@dataclass
class RaySource:
    """The records a Ray run reads: a cohort JSONL file's lines, or a MEDS root's label rows (with the label file
    and, optionally, one split). Opened once: the MEDS root's shards and its record count are read here."""

    cohort: Path
    meds_labels: Path | None = None
    meds_split: str | None = None

    def __post_init__(self) -> None:
        self.cohort = Path(self.cohort)
        self.shards: list[Path] = []
        if self.meds_labels is None:
            if not self.cohort.is_file():
                raise ConfigError(f"{self.cohort}: not found; check the path (a MEDS root needs --meds-labels).")
            with open(self.cohort, "rb") as fh:
                self.n = sum(1 for line in fh if line.strip())
        else:
            from icl_toolkit.data.meds import open_meds

            self.meds_labels = Path(self.meds_labels)
            meds = open_meds(self.cohort, self.meds_labels, split=self.meds_split)
            self.shards, self.n = list(meds.shards), len(meds)

    def count(self, limit: int | None = None) -> int:
        """Records the run reads, at most ``limit``."""
        return min(self.n, limit) if limit else self.n

    def dataset(self) -> Any:
        """The records as a Ray dataset of JSONL lines (one read task per MEDS data shard)."""
        import ray.data

        if self.meds_labels is None:
            return ray.data.read_text(str(self.cohort.resolve()))
        items = ray.data.from_items([{"shard": str(p.resolve())} for p in self.shards])
        kwargs = {
            "root": str(self.cohort.resolve()),
            "labels": str(self.meds_labels.resolve()),
            "split": self.meds_split,
        }
        return items.flat_map(_meds_lines, fn_kwargs=kwargs)  # type: ignore[arg-type]  # the stub omits fn_kwargs


def _meds_lines(row: dict[str, Any], root: str, labels: str, split: str | None) -> list[dict[str, str]]:
    """One MEDS data shard's records as JSONL lines (each shard is read by one task, streamed as from-meds does)."""
    from icl_toolkit.data.cohort import patient_to_dict
    from icl_toolkit.data.meds import open_meds

    cohort = open_meds(root, labels, split=split)
    cohort.shards = [Path(row["shard"])]
    return [{"text": json.dumps(patient_to_dict(p), separators=(",", ":"))} for p in cohort]


def _skip_done(batch: Mapping[str, Any], done: set[str]) -> dict[str, list[str]]:
    keep = []
    for t in batch["text"]:
        line = str(t)
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if _line_id(obj, line) not in done:
            keep.append(line)
    return {"text": keep}


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


@dataclass
class RayRunStats:
    """What :func:`run_on_ray` did."""

    records: int  # records written now
    seconds: float
    first_batch_seconds: float  # until the first records came back (model loads included)


def run_on_ray(
    source: RaySource,
    output: ShardedOutput,
    setup: Callable[..., Worker],
    kwargs: dict[str, Any],
    options: RayOptions,
    *,
    limit: int | None = None,
    on_resume: Callable[[int, int], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> RayRunStats:
    """Stream ``source`` through replicas running ``setup(**kwargs)``'s worker into ``output``: report a resume,
    start (or join) Ray, skip the patients already written, write shards as records come back, finish the
    output, stop what was started.

    Args:
        source: the records to read.
        output: the shard folder (its ``done`` patients are skipped).
        setup: a module-level function (Ray imports it by name in each replica) returning the worker.
        kwargs: ``setup``'s arguments (plain data: they travel to the replicas).
        options: where and how wide.
        limit: only the first N records.
        on_resume: called with (records already done, records to go) when resuming.
        advance: called with the number of records as each batch comes back (a progress bar).
    """
    ray_mod = require_ray()
    import ray.data

    if output.done and on_resume is not None:
        on_resume(len(output.done), max(source.count(limit) - len(output.done), 0))
    started = _init(ray_mod, options)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = True
        ds = source.dataset().filter(lambda row: bool(str(row["text"]).strip()))
        if limit:
            ds = ds.limit(limit)
        if output.done:
            ds = ds.map_batches(_skip_done, fn_kwargs={"done": output.done}, batch_format="numpy")
        ds = ds.map_batches(
            _Replica,
            fn_constructor_kwargs={"setup": setup, "kwargs": kwargs},
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=options.replicas),
            num_cpus=options.cpus_per_replica,
            num_gpus=options.gpus_per_replica or None,
            max_restarts=options.max_restarts,
            max_task_retries=-1,  # a batch waits for its restarted replica, up to max_restarts restarts
        )
        start = time.perf_counter()
        first: float | None = None
        pending: list[dict[str, Any]] = []
        n = 0
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if first is None:
                    first = time.perf_counter() - start
                recs = [json.loads(r) for r in batch["record"]]
                pending += recs
                n += len(recs)
                if advance is not None:
                    advance(len(recs))
                while len(pending) >= options.shard_size:
                    output.write(pending[: options.shard_size])
                    pending = pending[options.shard_size :]
        except ray_mod.exceptions.RayError as exc:  # the cluster lost more than Ray could restart or retry
            if pending:
                output.write(pending)  # what came back is kept: --resume skips it
            raise IclError(
                f"The Ray run stopped after {n} records this time ({type(exc).__name__}: {_first_line(exc)}). What came "
                f"back is written to {output.folder}; run the same command with --resume to predict the rest "
                "(every patient once)."
            ) from None
        if pending:
            output.write(pending)
        output.finish()
    finally:
        if started:
            ray_mod.shutdown()
    return RayRunStats(n, time.perf_counter() - start, first or 0.0)


def _first_line(exc: BaseException) -> str:
    """An exception's first line, at most 300 characters (Ray's messages run to dozens of lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


def _predictor_worker(
    model: str, engine: dict[str, Any], config: dict[str, Any], pool: str | None, index: str | None
) -> Worker:
    """A replica's predictor: the model, the pool and the driver's index, loaded once."""
    from icl_toolkit.backends.options import EngineOptions, open_backend
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.predictor import Predictor

    backend = open_backend(model, EngineOptions(**engine), progress=False)
    predictor = Predictor(backend, PredictConfig.model_validate(config), progress=False).fit(
        read_cohort(pool) if pool else [], index
    )
    return lambda patients: [p.to_dict() for p in predictor.predict_proba(patients)]


def predict_ray(
    source: RaySource,
    out: str | os.PathLike[str],
    config: PredictConfig,
    *,
    model: str = "default",
    engine: EngineOptions | None = None,
    pool: str | os.PathLike[str] | None = None,
    index: str | os.PathLike[str] | None = None,
    options: RayOptions | None = None,
    resume: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    on_resume: Callable[[int, int], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> tuple[ShardedOutput, RayRunStats]:
    """The patients of ``source`` predicted on Ray replicas into the shard folder ``out``.

    The driver checks the inputs and the output, builds (or loads and checks) the pool's index once and saves it
    beside the shards, so that every replica loads the same index instead of building its own. Called through
    :func:`~icl_toolkit.inference.run.predict_file` (``ray=RayOptions(...)``), which checks the arguments first.
    """
    from icl_toolkit.backends.options import EngineOptions
    from icl_toolkit.core.models import lm_id, load_tokenizer
    from icl_toolkit.data.cohort import content_hash, read_cohort
    from icl_toolkit.inference.predictor import check_pool
    from icl_toolkit.prompting.builder import PromptBuilder
    from icl_toolkit.retrieval.embedder import ProfileEmbedder
    from icl_toolkit.retrieval.index import DemoIndex
    from icl_toolkit.retrieval.representations import make_representation, needs_embedder

    require_ray()
    options = options or RayOptions()
    engine = engine or EngineOptions()
    out = Path(out)
    pool_records = read_cohort(pool) if pool is not None else []
    builder = PromptBuilder(load_tokenizer(model), config.prompt, engine.max_context or 1 << 30)
    provenance = {
        "model_id": lm_id(model),
        "engine": engine.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
        "templates_hash": builder.templates_hash,
        "cohort_file": str(source.cohort.resolve()),
        "pool_hash": content_hash(pool_records),
        "meds_labels": str(source.meds_labels.resolve()) if source.meds_labels else None,
        "meds_split": source.meds_split,
    }
    output = ShardedOutput(
        out, provenance, resume=resume, overwrite=overwrite, inputs={"--cohort": source.cohort, "--pool": pool}
    )
    index_dir = None
    if config.uses_demos:
        r = config.retrieval
        rep = make_representation(
            r, ProfileEmbedder() if needs_embedder(r.retriever, r.hybrid_weights) else None, pool_records
        )
        index_dir = out / INDEX_DIR if index is None else Path(index)
        if index is None:
            if not _fits(index_dir, pool_records, rep, config.prompt.task.name):
                check_pool(pool_records, config.prompt, str(pool))
                DemoIndex.build(pool_records, rep, task=config.prompt.task.name).save(index_dir)
        else:  # a given index is checked here, before Ray starts, not in every replica's first batch
            DemoIndex.load(index_dir).check(pool_records, rep, where=str(index_dir))
    kwargs = {
        "model": model,
        "engine": engine.model_dump(),
        "config": config.model_dump(mode="json"),
        "pool": str(Path(pool).resolve()) if pool else None,
        "index": str(index_dir.resolve()) if index_dir else None,
    }
    stats = run_on_ray(
        source, output, _predictor_worker, kwargs, options, limit=limit, on_resume=on_resume, advance=advance
    )
    return output, stats


def _fits(folder: Path, pool: list[Patient], representation: PatientRepresentation, task: str) -> bool:
    """Whether the run's own index in ``folder`` was built from this pool with these retriever settings, for
    ``task``. One that was not (left by the run an ``--overwrite`` replaces) is rebuilt, never reused."""
    from icl_toolkit.data.task import recorded_task
    from icl_toolkit.retrieval.index import DemoIndex

    if not (folder / DemoIndex.META_FILE).exists():
        return False
    try:
        index = DemoIndex.load(folder)
        index.check(pool, representation, where=str(folder))
    except ConfigError:
        return False
    return recorded_task(index.meta) == task


def vllm_processor_config(
    model_source: str,
    choice_token_ids: list[int],
    *,
    replicas: int = 1,
    tensor_parallel_size: int = 1,
    batch_size: int = 64,
    max_model_len: int | None = None,
) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]:
    """The ``vLLMEngineProcessorConfig`` keyword arguments and the pre/post-processing functions that score a
    built prompt's answer slot on ``ray.data.llm`` replicas (score mode, single-token choices).

    Use: ``build_processor(vLLMEngineProcessorConfig(**kwargs), preprocess=pre, postprocess=post)`` over a
    dataset with a ``prompt`` column (the text :class:`~icl_toolkit.inference.predictor.Predictor` builds). The
    prompt is sent as it is (no chat template, already applied by the toolkit's templates), one token is generated
    and the log-probabilities of the choices' first tokens come back (``logprob_token_ids``, as the toolkit's own
    vLLM backend asks for them); ``post`` turns them into P(yes).
    """
    engine_kwargs: dict[str, Any] = {"tensor_parallel_size": tensor_parallel_size, "enable_prefix_caching": True}
    if max_model_len:
        engine_kwargs["max_model_len"] = max_model_len
    kwargs = {
        "model_source": model_source,
        "concurrency": replicas,
        "batch_size": batch_size,
        "engine_kwargs": engine_kwargs,
        "chat_template_stage": False,
        "tokenize_stage": False,
        "detokenize_stage": False,
    }
    ids = list(choice_token_ids)

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        return {
            **row,
            "prompt": row["prompt"],
            "sampling_params": {"max_tokens": 1, "temperature": 0.0, "detokenize": False, "logprob_token_ids": ids},
        }

    def post(row: dict[str, Any]) -> dict[str, Any]:
        from icl_toolkit.backends import choice_probabilities

        slot = row["logprobs"][0]
        lps = [float((slot.get(t) or slot.get(str(t)))["logprob"]) for t in ids]
        keep = {k: v for k, v in row.items() if k not in ("logprobs", "sampling_params")}
        return {**keep, "logprobs": lps, "probability": choice_probabilities(lps)[0]}

    return kwargs, pre, post
