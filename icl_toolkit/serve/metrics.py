"""Operational metrics of ``icl serve`` for Prometheus (``GET /metrics``), through the official client library.

One registry per app (so two apps in one process never share counters). What is measured, and under which labels:

- ``icl_requests_total{route, method, status}`` and ``icl_request_duration_seconds{route}`` (a histogram): every
  HTTP request, by its route (one of the server's own paths, anything else ``other``: a URL never becomes a label),
  method and status code;
- ``icl_queue_patients`` (patients waiting), ``icl_queue_capacity_patients``, ``icl_rejected_requests_total``
  (refused with 503 because the queue was full), ``icl_dropped_patients_total`` (taken out of the queue when their
  client went away), ``icl_batches_total``: read from the service at scrape time;
- ``icl_batch_size_patients`` (a histogram of the patients per backend call) and ``icl_batch_seconds``;
- ``icl_prompt_tokens_total`` (prompt tokens of the predictions answered) and ``icl_predictions_total``;
- ``icl_model_load_seconds`` (how long loading the model, pool and index took) and ``icl_up`` (1 once ready);
- ``icl_monitor_writes_total{kind, result}``: monitor log writes (``predictions`` or ``outcomes``), ``ok`` or
  ``failed``.

No label carries patient data: routes are a fixed set, the rest are counts. The client library's ``_created``
series are turned off for the process (:func:`prometheus_client.disable_created_metrics`), which keeps a scrape
under a millisecond (``benchmarks/metrics_scrape.py``). ``/metrics`` needs the bearer token
only with ``--metrics-auth`` (and ``$ICL_API_KEY`` set); Prometheus scrapers usually sit inside the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ServerMetrics", "ROUTES"]

ROUTES = ("/v1/predict", "/v1/feedback", "/v1/info", "/health", "/metrics", "/docs", "/openapi.json")
"""The routes requests are counted under; any other path is counted as ``other``."""

_LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _QueueCollector(Collector):
    """The service's queue and batch counters, read when Prometheus scrapes (nothing is done per request)."""

    def __init__(self, service: Callable[[], Any]) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service()
        queued = GaugeMetricFamily("icl_queue_patients", "Patients waiting in the micro-batching queue.")
        capacity = GaugeMetricFamily("icl_queue_capacity_patients", "Most patients the queue holds (--max-queue).")
        refused = CounterMetricFamily("icl_rejected_requests", "Requests refused with 503 because the queue was full.")
        dropped = CounterMetricFamily("icl_dropped_patients", "Queued patients dropped because their client went away.")
        batches = CounterMetricFamily("icl_batches", "Backend calls made by the batch worker.")
        up = GaugeMetricFamily("icl_up", "1 once the model, pool and index are loaded and the worker runs.")
        queued.add_metric([], float(s.queued) if s is not None else 0.0)
        capacity.add_metric([], float(s.batching.max_queue) if s is not None else 0.0)
        refused.add_metric([], float(s.refused) if s is not None else 0.0)
        dropped.add_metric([], float(s.dropped) if s is not None else 0.0)
        batches.add_metric([], float(s.batches) if s is not None else 0.0)
        up.add_metric([], 1.0 if s is not None else 0.0)
        yield from (queued, capacity, refused, dropped, batches, up)


class ServerMetrics:
    """The metrics of one app (see the module docstring).

    Args:
        service: returns the loaded service, or None while loading (read at scrape time).
    """

    def __init__(self, service: Callable[[], Any]) -> None:
        from prometheus_client import disable_created_metrics

        # no ``_created`` series (a third of the lines of every scrape, and nothing a dashboard of this server uses)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "icl_requests", "HTTP requests by route, method and status.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "icl_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "icl_batch_size_patients", "Patients per backend call.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "icl_batch_seconds", "Seconds per backend call.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("icl_prompt_tokens", "Prompt tokens of the predictions answered.", registry=r)
        self.predictions = Counter("icl_predictions", "Predictions answered.", registry=r)
        self.model_load = Gauge(
            "icl_model_load_seconds", "Seconds that loading the model, pool and index took.", registry=r
        )
        self.monitor_writes = Counter(
            "icl_monitor_writes", "Monitor log writes by kind and result.", ["kind", "result"], registry=r
        )
        for kind in ("predictions", "outcomes"):
            for result in ("ok", "failed"):
                self.monitor_writes.labels(kind, result)  # present (at 0) before the first write
        r.register(_QueueCollector(service))

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request (its path becomes a route label only when it is one of :data:`ROUTES`)."""
        route = path if path in ROUTES else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, patients: int, seconds: float) -> None:
        """One backend call of the batch worker."""
        self.batch_size.observe(patients)
        self.batch_seconds.observe(seconds)

    def observe_predictions(self, results: list[dict[str, Any]]) -> None:
        """The predictions of one answered request (their prompt tokens)."""
        ok = [r for r in results if "error" not in r]
        self.predictions.inc(len(ok))
        self.prompt_tokens.inc(sum(int(r.get("prompt_tokens") or 0) for r in ok))

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
