"""The service object behind ``icl serve``: a loaded predictor and a bounded micro-batcher.

Concurrent requests are coalesced: each patient of each request goes into one
queue; a single worker takes up to ``max_batch`` patients, waiting at most
``max_wait_ms`` after the first for more, groups them by their options (k,
strategy, demos) and runs each group through the same :class:`Predictor` as
``icl predict``, in one worker thread (the backend is not shared between
threads). A group that fails is retried patient by patient, so one bad patient
fails only its own request; the others batched with it are answered.

Under pressure:

- **The queue is bounded** (``max_queue`` patients waiting). A request that
  does not fit is refused at once (:class:`Overloaded`, answered 503 with
  ``Retry-After`` from the measured time per patient), so admitted requests keep
  a bounded wait instead of every request waiting minutes.
- **Work whose client is gone is dropped**: when a request is cancelled (its
  client disconnected), its patients still waiting are taken out of the queue
  and never scored.
- **Shutdown within a grace period**: :meth:`PredictionService.begin_shutdown`
  (on SIGTERM) refuses new work, lets the worker finish what it can, and at the
  deadline fails every patient still waiting with :class:`ShuttingDown`
  (answered 503 with the request id), so every request gets an answer before
  the server's grace period ends and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from icl_toolkit.backends import Backend
from icl_toolkit.core.errors import ConfigError, IclError
from icl_toolkit.data.cohort import Patient, record_issues
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.inference.predictor import Predictor
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.gain import GainScores
from icl_toolkit.retrieval.index import DemoIndex
from icl_toolkit.serve.config import BatchSettings, ServerSettings
from icl_toolkit.serve.errors import Rejected
from icl_toolkit.serve.schemas import PredictOptions, PredictRequest

__all__ = ["PredictionService", "BatchSettings", "Overloaded", "ShuttingDown", "admit", "answer"]

log = logging.getLogger("icl.serve")


class Overloaded(IclError):
    """The queue has no room for a request's patients; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(IclError):
    """The service is stopping: the request was not (fully) scored."""


@dataclass(eq=False)
class _Item:
    patient: Patient
    options: PredictOptions
    request: int
    future: asyncio.Future = field(repr=False)


class PredictionService:
    """Holds the backend, pool, index and predictors; predicts with bounded micro-batching.

    Args:
        backend: a loaded backend (see :mod:`icl_toolkit.backends`).
        pool: the demonstration pool.
        index: its index (built when ``None``).
        config: the server's prediction spec; requests override k, strategy and demos.
        embedder: profile embedder (default: the embedded MiniLM).
        batching: micro-batching and queue settings.
    """

    def __init__(
        self,
        backend: Backend,
        pool: Sequence[Patient],
        index: DemoIndex | None,
        config: PredictConfig,
        *,
        embedder: ProfileEmbedder | None = None,
        batching: BatchSettings | None = None,
        gain: GainScores | None = None,
    ) -> None:
        from icl_toolkit.retrieval.representations import make_representation, needs_embedder

        self.backend = backend
        self.pool = list(pool)
        self.config = config
        r = config.retrieval
        self.embedder = embedder or (
            ProfileEmbedder() if self.pool and needs_embedder(r.retriever, r.hybrid_weights) else None
        )
        self.index = (
            index
            if index is not None or not self.pool
            else DemoIndex.build(
                self.pool,
                make_representation(r, self.embedder, self.pool),
                progress=False,
                task=config.prompt.task.name,
            )
        )
        self.gain = gain  # the index's gain scores, for strategy gain (checked against the model when used)
        self.batching = batching or BatchSettings()
        self._predictors: dict[PredictConfig, Predictor] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._queue: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._requests = 0
        self._stopping = False
        self._cutoff: asyncio.TimerHandle | None = None
        self.seconds_per_patient = 0.5  # running mean of the backend's time per patient, for Retry-After
        self.batches = 0
        self.dropped = 0  # patients taken out of the queue because their client went away
        self.refused = 0  # requests refused because the queue was full
        self.batch_observer: Callable[[int, float], None] | None = None  # (patients, seconds) per backend call

    # ------------------------------------------------------------------ predictors

    def spec(self, options: PredictOptions) -> PredictConfig:
        """The prediction spec of a request: the server's spec with the request's k, strategy and demos."""
        return PredictConfig.from_options(base=self.config, k=options.k, strategy=options.strategy, demos=options.demos)

    def predictor(self, options: PredictOptions) -> Predictor:
        """The fitted predictor for these options (cached by spec; fitting reuses the loaded index)."""
        config = self.spec(options)
        if config not in self._predictors:
            gain = self.gain if config.retrieval.strategy == "gain" else None  # Predictor.fit refuses a missing one
            self._predictors[config] = Predictor(self.backend, config, embedder=self.embedder, progress=False).fit(
                self.pool, self.index, gain=gain
            )
        return self._predictors[config]

    def monitor_reference(self, options: PredictOptions | None = None) -> dict[str, Any]:
        """The pool summary the monitor log is compared with (``reference.json``): its rows, code counts and
        prevalence, and the demos a sample of its own patients gets from this server's retriever under ``options``
        (default: the default request options; :func:`~icl_toolkit.evaluation.monitor.reference.pool_reference`)."""
        from icl_toolkit.evaluation.monitor.reference import pool_reference

        default = options or PredictOptions()
        if default.demos == "rationale":  # the same demos are retrieved; a label-only pool cannot show rationales
            default = default.model_copy(update={"demos": "label"})
        retrieve = self.predictor(default).retrieve if self.pool and default.k else None
        return pool_reference(self.pool, retrieve)

    def request_tokens(self, n_patients: int, options: PredictOptions) -> int:
        """An upper estimate of the prompt tokens a request costs, from the server's history budgets (what a
        per-request cost limit is checked against before any work)."""
        p = self.spec(options).prompt
        k = self.spec(options).retrieval.k
        return n_patients * (p.query_tokens + k * p.demo_tokens + 150 * (k + 1))

    def predict_now(self, patients: Sequence[Patient], options: PredictOptions) -> list[dict[str, Any]]:
        """Predict synchronously (in the calling thread), as ``icl predict`` would."""
        predictor = self.predictor(options)
        patients = list(patients)
        retrievals = predictor.retrieve(patients)
        preds = predictor.predict_proba(patients, retrievals)
        prompts = None
        if options.return_prompt:  # the same retrievals: demos are chosen once
            prompts = [bp.text for bp in predictor.build_prompts(patients, retrievals)]
        out = []
        for i, p in enumerate(preds):
            rec = p.to_dict()
            rec["predicted"] = int(p.probability >= options.threshold)
            if prompts is not None:
                rec["prompt"] = prompts[i]
            out.append(rec)
        return out

    # ------------------------------------------------------------------ queue

    @property
    def queued(self) -> int:
        """Patients waiting to be scored."""
        return len(self._queue)

    def retry_after(self) -> int:
        """Seconds after which the queue has likely drained (at least 1, at most 300)."""
        return int(min(300, max(1, math.ceil(self.queued * self.seconds_per_patient))))

    def refuse_if_full(self) -> None:
        """Refuse a request before its body is read and validated (which costs CPU too) while the queue is full.

        Raises:
            Rejected: 503 with ``Retry-After``.
        """
        if self.queued >= self.batching.max_queue:
            self.refused += 1
            raise Rejected(
                503, f"the server is busy ({self.queued} patients queued); retry later", retry_after=self.retry_after()
            )

    async def start(self) -> None:
        """Start the batch worker in the running event loop (again after :meth:`stop`)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl-backend")
        self._stopping = False
        self._wake = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="icl-batcher")

    def begin_shutdown(self, drain_seconds: float) -> None:
        """Refuse new work; fail what is still waiting after ``drain_seconds`` (the worker finishes its batch)."""
        if self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        self._cutoff = loop.call_later(
            max(drain_seconds, 0.0),
            self._fail_waiting,
            ShuttingDown("the server is shutting down; this request was not scored"),
        )
        if self._wake is not None:
            self._wake.set()

    def _fail_waiting(self, exc: Exception) -> None:
        while self._queue:
            it = self._queue.popleft()
            if not it.future.done():
                it.future.set_exception(exc)

    async def stop(self) -> None:
        """Stop at once: fail what is waiting, stop the worker, release the backend thread (without waiting)."""
        self._stopping = True
        if self._cutoff is not None:
            self._cutoff.cancel()
        self._fail_waiting(ShuttingDown("the server stopped; this request was not scored"))
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def predict(self, patients: Sequence[Patient], options: PredictOptions) -> list[dict[str, Any] | Exception]:
        """Predictions for one request's patients, batched with concurrent requests; a failed patient gives its
        exception in its place.

        Raises:
            Overloaded: the queue has no room for these patients (nothing was queued).
            ShuttingDown: the service is stopping.
        """
        if self._executor is None or self._wake is None:
            raise ConfigError("PredictionService.start() was not called")
        if self._stopping:
            raise ShuttingDown("the server is shutting down; send the request to another instance or retry later")
        if self.queued + len(patients) > self.batching.max_queue:
            self.refused += 1
            raise Overloaded(
                f"the server is busy ({self.queued} patients queued, room for {self.batching.max_queue}); retry later",
                self.retry_after(),
            )
        loop = asyncio.get_running_loop()
        self._requests += 1
        items = [_Item(p, options, self._requests, loop.create_future()) for p in patients]
        self._queue.extend(items)
        self._wake.set()
        try:
            return list(await asyncio.gather(*(it.future for it in items), return_exceptions=True))
        except asyncio.CancelledError:  # the client went away: its patients still waiting are never scored
            for it in items:
                if not it.future.done():
                    it.future.cancel()
                try:
                    self._queue.remove(it)
                    self.dropped += 1
                except ValueError:
                    pass  # already taken by the worker
            raise

    async def _next_batch(self) -> list[_Item]:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        if not self.batching.enabled:  # one request at a time, as it arrived
            first = self._queue[0].request
            batch = []
            while self._queue and self._queue[0].request == first:
                batch.append(self._queue.popleft())
            return batch
        deadline = loop.time() + self.batching.max_wait_ms / 1000
        while len(self._queue) < self.batching.max_batch and not self._stopping:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        return [self._queue.popleft() for _ in range(min(len(self._queue), self.batching.max_batch))]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [it for it in await self._next_batch() if not it.future.done()]
            groups: dict[PredictOptions, list[_Item]] = {}
            for it in batch:
                groups.setdefault(it.options, []).append(it)
            for options, group in groups.items():
                await self._run_group(loop, options, group)

    async def _run_group(self, loop: asyncio.AbstractEventLoop, options: PredictOptions, group: list[_Item]) -> None:
        self.batches += 1
        assert self._executor is not None
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.predict_now, [i.patient for i in group], options)
        except Exception as exc:  # noqa: BLE001 - isolate the failure: retry one by one
            if len(group) == 1:
                if not group[0].future.done():
                    group[0].future.set_exception(exc)
                return
            for it in group:
                await self._run_group(loop, options, [it])
            return
        took = time.perf_counter() - start
        if self.batch_observer is not None:
            self.batch_observer(len(group), took)
        each = took / len(group)
        self.seconds_per_patient = 0.8 * self.seconds_per_patient + 0.2 * each
        for it, res in zip(group, results):
            if not it.future.done():
                it.future.set_result(res)


def admit(
    req: PredictRequest,
    body: bytes,
    settings: ServerSettings,
    service: PredictionService | None,
    ready: bool,
    stopping: bool,
) -> PredictionService:
    """Check a validated request before any work: the cohort format's cross-field rules, the per-request limits,
    the server's state. Returns the service that takes it.

    Raises:
        Rejected: 422 for a broken cohort rule or too large a k (each naming the field), 413 for too many patients,
            demonstrations or prompt tokens, 503 while loading or stopping.
    """
    import json

    # the cohort format's cross-field rules (onset date with label 1, onset after index, finite values, ...)
    raw = json.loads(body)["patients"]
    issues = [
        {"field": f"patients[{i}].{where}", "msg": what, "type": "cohort_rule"}
        for i, p in enumerate(raw)
        for where, what in record_issues(p)
    ]
    if issues:
        raise Rejected(422, "invalid request", issues)
    o, n = req.options, len(req.patients)
    if o.k > settings.max_k:
        raise Rejected(
            422,
            "invalid request",
            [{"field": "options.k", "type": "less_than_equal", "msg": f"k is at most {settings.max_k} on this server"}],
        )
    if n > settings.max_patients:
        raise Rejected(413, f"{n} patients in one request; the limit is {settings.max_patients}")
    if stopping:
        raise Rejected(503, "the server is shutting down", retry_after=5)
    if service is None or not ready:
        raise Rejected(503, "not ready: the model and index are still loading", retry_after=5)
    k = service.spec(o).retrieval.k
    if n * k > settings.max_demos:
        raise Rejected(
            413,
            f"{n} patients x k={k} = {n * k} demonstrations in one request; the limit is "
            f"{settings.max_demos}. Send fewer patients per request or a smaller k.",
        )
    tokens = service.request_tokens(n, o)
    if tokens > settings.max_request_tokens:
        raise Rejected(
            413,
            f"this request would score about {tokens} prompt tokens; the limit is "
            f"{settings.max_request_tokens}. Send fewer patients per request or a smaller k.",
        )
    return service


async def answer(
    service: PredictionService,
    req: PredictRequest,
    is_disconnected: Callable[[], Awaitable[bool]],
    request_id: str,
    poll_s: float = 0.25,
) -> list[dict[str, Any]] | None:
    """The request's predictions, batched with concurrent requests; ``None`` when the client went away first (its
    queued patients are dropped: nobody is left to answer).

    Raises:
        Rejected: 503 (queue full, shutting down: with ``Retry-After``), 500 (a prediction failed; the log has it).
    """
    task = asyncio.ensure_future(service.predict(req.patients, req.options))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                break
            if await is_disconnected():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                log.info("%s client disconnected while waiting; its queued patients were dropped", request_id)
                return None
    except asyncio.CancelledError:
        task.cancel()
        raise
    try:
        results = task.result()
    except Overloaded as exc:
        raise Rejected(503, str(exc), retry_after=exc.retry_after) from None
    except ShuttingDown as exc:
        raise Rejected(503, str(exc), retry_after=5) from None
    failed = [r for r in results if isinstance(r, Exception)]
    if any(isinstance(r, ShuttingDown) for r in failed):
        raise Rejected(503, "the server is shutting down; this request was not (fully) scored", retry_after=5)
    if failed:
        log.error("%s prediction failed: %s", request_id, type(failed[0]).__name__)
        raise Rejected(500, "prediction failed; the server log has the details under this request id")
    return [r for r in results if isinstance(r, dict)]
