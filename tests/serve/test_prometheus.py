"""``GET /metrics``: Prometheus' own parser reads it, its counters move with traffic, no patient data in it, and
it needs the bearer token only with metrics_auth."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from icl_toolkit.data.cohort import _PATIENT  # noqa: E402
from icl_toolkit.evaluation.monitor.log import MonitorLog  # noqa: E402
from icl_toolkit.inference.config import PredictConfig  # noqa: E402
from icl_toolkit.serve.app import create_app  # noqa: E402
from icl_toolkit.serve.config import BatchSettings, ServerSettings  # noqa: E402
from icl_toolkit.serve.service import PredictionService  # noqa: E402

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIG = PredictConfig.from_options(k=2, query_tokens=120, demo_tokens=100)


def _as_json(p) -> dict:
    return json.loads(_PATIENT.dump_json(p, warnings=False))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, as Prometheus' text parser reads it: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(scope="module")
def service(tiny_backend_obj, small_cohort, hash_embedder):
    return PredictionService(tiny_backend_obj, small_cohort[:60], None, CONFIG, embedder=hash_embedder,
                             batching=BatchSettings(max_batch=4, max_wait_ms=10))


def _client(service, tmp_path, **settings):
    monitor = MonitorLog(tmp_path / "mon", b"k" * 32, model={"model": "tiny"})
    app = create_app(lambda: service, ServerSettings(api_key=KEY, **settings), monitor=monitor)
    return TestClient(app)


def _wait_ready(c: TestClient) -> None:
    import time

    for _ in range(400):
        if c.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(c.get("/health").json())


def test_metrics_parse_and_move_with_traffic_without_patient_data(service, small_cohort, tmp_path):
    patients = small_cohort[60:66]
    with _client(service, tmp_path) as c:
        _wait_ready(c)
        before = _samples(c.get("/metrics").text)
        r = c.post("/v1/predict", headers=AUTH, json={"patients": [_as_json(p) for p in patients]})
        assert r.status_code == 200, r.text
        tokens = sum(p["prompt_tokens"] for p in r.json()["predictions"])
        assert c.post("/v1/predict", json={"patients": []}).status_code == 401  # no token: counted as a 401
        fb = {"outcomes": [{"patient_id": patients[0].patient_id, "outcome": 1, "date": "2027-01-01"}]}
        assert c.post("/v1/feedback", headers=AUTH, json=fb).status_code == 200
        c.get("/no/such/path/P000123")
        resp = c.get("/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        after = _samples(resp.text)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("icl_requests_total", route="/v1/predict", method="POST", status="200") == 1
    assert moved("icl_requests_total", route="/v1/predict", method="POST", status="401") == 1
    assert moved("icl_requests_total", route="/v1/feedback", method="POST", status="200") == 1
    assert moved("icl_requests_total", route="other", method="GET", status="404") == 1  # a URL is never a label
    assert moved("icl_request_duration_seconds_count", route="/v1/predict") == 2
    assert moved("icl_predictions_total") == 6 and moved("icl_prompt_tokens_total") == tokens > 0
    assert moved("icl_batch_size_patients_sum") == 6 and moved("icl_batch_size_patients_count") >= 2  # batches of 4
    assert moved("icl_monitor_writes_total", kind="predictions", result="ok") == 1
    assert moved("icl_monitor_writes_total", kind="outcomes", result="ok") == 1
    assert after[("icl_up", ())] == 1 and after[("icl_queue_patients", ())] == 0
    assert after[("icl_queue_capacity_patients", ())] == service.batching.max_queue
    assert after[("icl_model_load_seconds", ())] >= 0
    assert ("icl_rejected_requests_total", ()) in after and ("icl_dropped_patients_total", ()) in after
    # no patient id, date of birth or history text anywhere in the exposition
    text = resp.text
    for p in patients:
        assert p.patient_id not in text and p.birth_date.isoformat() not in text
        assert all(e.name not in text for e in p.events)


def test_metrics_auth_is_an_option(service, tmp_path):
    with _client(service, tmp_path) as c:  # default: /metrics is open, /v1/* needs the token
        assert c.get("/metrics").status_code == 200
    with _client(service, tmp_path, metrics_auth=True) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=AUTH).status_code == 200
