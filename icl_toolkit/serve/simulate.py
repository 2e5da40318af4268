"""A simulated deployment: patients replayed through the service's HTTP app, window by window, on a simulated clock.

:class:`SimulatedDeployment` runs the real app (:func:`~icl_toolkit.serve.app.create_app`: validation, batching,
the monitor log, ``/v1/feedback``) in-process through FastAPI's test client, with the monitor log's clock set to
the simulated time, so months of traffic replay in minutes and ``icl monitor --window 30d`` sees real windows.
Replays resume: patients whose pseudonym is already in the log are not sent again.

Used by ``recipes/monitor_streams.py`` (``make monitor-streams``) and its test.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from icl_toolkit.core.errors import IclError
from icl_toolkit.data.cohort import Patient, patient_to_dict
from icl_toolkit.evaluation.monitor.log import MonitorLog
from icl_toolkit.serve.app import create_app
from icl_toolkit.serve.config import ServerSettings
from icl_toolkit.serve.schemas import PredictOptions
from icl_toolkit.serve.service import PredictionService

__all__ = ["SimulatedDeployment"]


class SimulatedDeployment:
    """One service, one monitor folder, a simulated clock.

    Args:
        service: the loaded prediction service (its pool is the monitor's reference).
        folder: the monitor folder (``predictions.jsonl``, ``feedback.jsonl``, ``reference.json``).
        key: the pseudonym key.
        start: the simulated time of the first window.
        window: the length of a window; window ``w``'s requests are stamped within ``[start + w*window, +window)``.
        options: the request options (also those ``reference.json``'s neighbour sample is retrieved with).
    """

    def __init__(
        self,
        service: PredictionService,
        folder: str | os.PathLike[str],
        key: bytes,
        *,
        start: dt.datetime,
        window: dt.timedelta,
        options: PredictOptions | None = None,
    ) -> None:
        self.now = start
        self.start, self.window = start, window
        self.options = options or PredictOptions()
        self.service = service
        self.monitor = MonitorLog(
            folder, key, model={"model": service.backend.model_id}, pool=service.pool, clock=lambda: self.now
        )
        self._client: Any = None

    def __enter__(self) -> SimulatedDeployment:
        from fastapi.testclient import TestClient

        self._client = TestClient(create_app(lambda: self.service, ServerSettings(), monitor=self.monitor))
        self._client.__enter__()
        for _ in range(6000):
            health = self._client.get("/health")
            if health.status_code == 200:
                break
            time.sleep(0.05)
        else:
            raise IclError(f"the simulated service did not become ready: {health.json()}")
        # the reference's neighbour sample under the options this replay sends
        self.monitor.write_reference(self.service.monitor_reference(self.options))
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.__exit__(*exc)
        self.monitor.close()

    def predict(
        self,
        window_no: int,
        patients: Sequence[Patient],
        *,
        batch: int = 8,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Send ``patients`` in requests of ``batch``, stamped across window ``window_no``; those already logged are
        skipped (a resumed replay). Returns how many were sent."""
        todo = [p for p in patients if self.monitor.pseudonym(p.patient_id) not in self.monitor.known]
        base = self.start + window_no * self.window
        sent = 0
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            self.now = base + self.window * (0.9 * (len(patients) - len(todo) + i) / max(len(patients), 1))
            r = self._client.post(
                "/v1/predict",
                json={"patients": [patient_to_dict(p) for p in chunk], "options": self.options.model_dump()},
            )
            if r.status_code != 200:
                raise IclError(f"the simulated service answered {r.status_code}: {r.text[:500]}")
            sent += len(chunk)
            if progress is not None:
                progress(len(chunk))
        return sent

    def feedback(self, patients: Sequence[Patient], when: dt.datetime) -> dict[str, Any]:
        """Report the patients' outcomes (their labels; the outcome date, else the index date) through
        ``POST /v1/feedback`` at simulated time ``when``."""
        self.now = when
        outcomes = [
            {
                "patient_id": p.patient_id,
                "outcome": int(p.label),
                "date": (p.outcome_date or p.index_date).isoformat(),
            }
            for p in patients
            if p.label is not None
        ]
        out: dict[str, Any] = {"recorded": 0, "duplicates": 0}
        for i in range(0, len(outcomes), 500):
            r = self._client.post("/v1/feedback", json={"outcomes": outcomes[i : i + 500]})
            if r.status_code != 200:
                raise IclError(f"feedback answered {r.status_code}: {r.text[:500]}")
            for k in out:
                out[k] += r.json()[k]
        return out
