"""The service object behind ``icl serve``: a loaded predictor and a micro-batcher.

Concurrent requests are coalesced: each patient of each request goes into one
queue; a single worker takes up to ``max_batch`` patients, waiting at most
``max_wait_ms`` after the first for more, groups them by their options (k,
strategy, demos) and runs each group through the same :class:`Predictor` as
``icl predict``, in one worker thread (the backend is not shared between
threads). A group that fails is retried patient by patient, so one bad patient
fails only its own request; the others batched with it are answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from icl_toolkit.cohort import Patient
from icl_toolkit.errors import ConfigError
from icl_toolkit.predict import Predictor
from icl_toolkit.retrieve import DemoIndex
from icl_toolkit.spec import PredictConfig
from icl_toolkit.serve.schemas import PredictOptions

__all__ = ["PredictionService", "BatchSettings"]


@dataclass(frozen=True)
class BatchSettings:
    max_batch: int = 16
    """Most patients per backend batch."""
    max_wait_ms: float = 10.0
    """How long the first patient of a batch waits for others."""
    enabled: bool = True
    """False: every request runs alone, as it arrives (for comparison)."""


@dataclass
class _Item:
    patient: Patient
    options: PredictOptions
    future: asyncio.Future = field(repr=False)


class PredictionService:
    """Holds the backend, pool, index and predictors; predicts with micro-batching.

    Args:
        backend: a loaded backend (see :mod:`icl_toolkit.backends`).
        pool: the demonstration pool.
        index: its index (built when ``None``).
        config: the base prediction config; requests override k, strategy and demos.
        embedder: profile embedder (default: the embedded MiniLM).
        batching: micro-batching settings.
    """

    def __init__(self, backend: Any, pool: Sequence[Patient], index: DemoIndex | None, config: PredictConfig,
                 *, embedder: Any = None, batching: BatchSettings | None = None) -> None:
        from icl_toolkit.retrieve import ProfileEmbedder

        self.backend = backend
        self.pool = list(pool)
        self.config = config
        self.embedder = embedder or (ProfileEmbedder() if self.pool else None)
        self.index = index if index is not None or not self.pool else DemoIndex.build(self.pool, self.embedder,
                                                                                         progress=False)
        self.batching = batching or BatchSettings()
        self._predictors: dict[PredictConfig, Predictor] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0

    # ------------------------------------------------------------------ predictors

    def spec(self, options: PredictOptions) -> PredictConfig:
        """The prediction spec of a request: the server's spec with the request's k, strategy and demos."""
        return PredictConfig.from_options(base=self.config, k=options.k, strategy=options.strategy, demos=options.demos)

    def predictor(self, options: PredictOptions) -> Predictor:
        """The fitted predictor for these options (cached by spec; fitting reuses the loaded index)."""
        config = self.spec(options)
        if config not in self._predictors:
            self._predictors[config] = Predictor(self.backend, config, embedder=self.embedder, progress=False).fit(
                self.pool, self.index)
        return self._predictors[config]

    def predict_now(self, patients: Sequence[Patient], options: PredictOptions) -> list[dict[str, Any]]:
        """Predict synchronously (in the calling thread), as ``icl predict`` would."""
        predictor = self.predictor(options)
        patients = list(patients)
        retrievals = predictor.retrieve(patients)
        preds = predictor.predict_proba(patients, retrievals)
        out = []
        prompts = None
        if options.return_prompt:  # the same retrievals: demos are chosen once
            prompts = [bp.text for bp in predictor.build_prompts(patients, retrievals)]
        for i, p in enumerate(preds):
            rec = p.to_dict()
            rec["predicted"] = int(p.probability >= options.threshold)
            if prompts is not None:
                rec["prompt"] = prompts[i]
            out.append(rec)
        return out

    # ------------------------------------------------------------------ batching

    async def start(self) -> None:
        """Start the batch worker in the running event loop (again after :meth:`stop`)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icl-backend")
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="icl-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._queue is not None:
            await self._queue.join()
        if self._worker is not None:
            self._worker.cancel()
        self._queue = self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def predict(self, patients: Sequence[Patient], options: PredictOptions) -> list[dict[str, Any] | Exception]:
        """Predictions for one request's patients, batched with concurrent requests; a failed patient gives its
        exception in its place."""
        loop = asyncio.get_running_loop()
        if self._executor is None:
            raise ConfigError("PredictionService.start() was not called")
        if not self.batching.enabled or self._queue is None:
            try:
                return list(await loop.run_in_executor(self._executor, self.predict_now, patients, options))
            except Exception as exc:  # noqa: BLE001 - reported per request by the route
                return [exc] * len(patients)
        items = [_Item(p, options, loop.create_future()) for p in patients]
        for it in items:
            self._queue.put_nowait(it)
        return list(await asyncio.gather(*(it.future for it in items), return_exceptions=True))

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = loop.time() + self.batching.max_wait_ms / 1000
            while len(batch) < self.batching.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            groups: dict[PredictOptions, list[_Item]] = {}
            for it in batch:
                groups.setdefault(it.options, []).append(it)
            for options, group in groups.items():
                await self._run_group(loop, options, group)
            for _ in batch:
                self._queue.task_done()

    async def _run_group(self, loop: asyncio.AbstractEventLoop, options: PredictOptions, group: list[_Item]) -> None:
        self.batches += 1
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
        for it, res in zip(group, results):
            if not it.future.done():
                it.future.set_result(res)
