"""``icl serve``: validation, auth and limits in-process; micro-batching under concurrency; a real server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from icl_toolkit.data.cohort import _PATIENT  # noqa: E402
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.inference.predictor import Predictor  # noqa: E402
from icl_toolkit.prompting.config import PromptConfig  # noqa: E402
from icl_toolkit.retrieval.config import RetrievalConfig  # noqa: E402
from icl_toolkit.serve.app import create_app
from icl_toolkit.serve.config import (
    BatchSettings,
    ServerSettings,  # noqa: E402
)
from icl_toolkit.serve.launch import free_port, start_local_server, wait_healthy  # noqa: E402
from icl_toolkit.serve.service import PredictionService  # noqa: E402

CONFIG = PredictConfig(retrieval=RetrievalConfig(k=2), prompt=PromptConfig(query_tokens=120, demo_tokens=100))
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def as_json(p) -> dict:
    return json.loads(_PATIENT.dump_json(p, warnings=False))


@pytest.fixture(scope="module")
def service(tiny_backend_obj, small_cohort, hash_embedder):
    return PredictionService(tiny_backend_obj, small_cohort[:100], None, CONFIG, embedder=hash_embedder,
                             batching=BatchSettings(max_batch=8, max_wait_ms=20))


@pytest.fixture(scope="module")
def offline(tiny_backend_obj, small_cohort, hash_embedder):
    """icl predict's predictor over the same pool and settings."""
    return Predictor(tiny_backend_obj, CONFIG, embedder=hash_embedder, progress=False).fit(small_cohort[:100])


def _ready(client: TestClient) -> None:
    for _ in range(400):
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(client.get("/health").json())


@pytest.fixture()
def client(service):
    app = create_app(lambda: service, ServerSettings(api_key=KEY, max_patients=5, max_body_mb=1.0))
    with TestClient(app) as c:
        _ready(c)
        yield c


def test_predictions_equal_icl_predict_and_carry_its_record(client, offline, small_cohort):
    patients = small_cohort[100:104]
    r = client.post("/v1/predict", headers=AUTH, json={"patients": [as_json(p) for p in patients],
                                                        "options": {"k": 2, "return_prompt": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    ref = offline.predict_proba(patients)
    got = body["predictions"]
    assert [g["patient_id"] for g in got] == [p.patient_id for p in patients]
    np.testing.assert_allclose([g["probability"] for g in got], [x.probability for x in ref], atol=1e-5)
    assert [g["prompt_hash"] for g in got] == [x.prompt_hash for x in ref]
    assert [[d["patient_id"] for d in g["demos"]] for g in got] == [[d["patient_id"] for d in x.demos] for x in ref]
    from icl_toolkit.core.artifacts import text_hash

    assert all(text_hash(g["prompt"]) == g["prompt_hash"] for g in got)
    # threshold is per request; zero-shot needs no demos
    r = client.post("/v1/predict", headers=AUTH, json={"patients": [as_json(patients[0])],
                                                        "options": {"k": 0, "threshold": 0.0}})
    assert r.status_code == 200 and r.json()["predictions"][0]["predicted"] == 1
    zero = r.json()["predictions"][0]
    assert zero["demos"] == [] and zero["prompt"] is None


def test_auth_validation_and_limits(client, small_cohort):
    one = {"patients": [as_json(small_cohort[100])]}
    assert client.post("/v1/predict", json=one).status_code == 401
    assert client.post("/v1/predict", json=one, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/health").status_code == 200  # open, for load balancers

    bad = as_json(small_cohort[100])
    bad["sex"] = "x"
    bad["events"][1]["date"] = "not a date"
    r = client.post("/v1/predict", headers=AUTH, json={"patients": [bad], "options": {"k": -1}})
    assert r.status_code == 422
    fields = {d["field"] for d in r.json()["detail"]}
    assert {"patients[0].sex", "patients[0].events[1].date", "options.k"} <= fields
    assert all("input" not in d for d in r.json()["detail"])  # the patient's values are not echoed back

    r = client.post("/v1/predict", headers=AUTH, json={"patients": [as_json(p) for p in small_cohort[100:106]]})
    assert r.status_code == 413 and "limit is 5" in r.json()["error"]
    r = client.post("/v1/predict", headers=AUTH, content=b"{" + b" " * (1 << 20) + b"}")
    assert r.status_code == 413
    r = client.post("/v1/predict", headers=AUTH, content=b"not json")
    assert r.status_code == 422


def test_info_and_openapi(client):
    info = client.get("/v1/info", headers=AUTH).json()
    assert info["pool_size"] == 100 and info["model_id"] == "tiny-llama-0" and info["batching"]["max_batch"] == 8
    spec = client.get("/openapi.json").json()
    assert "/v1/predict" in spec["paths"] and "Patient" in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["PredictRequest"]["properties"]["patients"]["items"]["$ref"] == \
        "#/components/schemas/Patient"


def test_health_is_not_ready_until_loaded(service):
    gate = threading.Event()

    def slow_load():
        gate.wait(10)
        return service

    with TestClient(create_app(slow_load)) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert c.post("/v1/predict", json={"patients": []}).status_code in (422, 503)
        gate.set()
        _ready(c)

    def broken():
        raise RuntimeError("no such model")

    with TestClient(create_app(broken)) as c:
        for _ in range(100):
            if c.get("/health").json()["status"] == "failed":
                break
            time.sleep(0.02)
        assert c.get("/health").json() == {"status": "failed", "detail": "RuntimeError: no such model"}


def test_concurrent_requests_are_batched_and_a_failure_stays_in_its_request(client, service, offline, small_cohort,
                                                                            monkeypatch):
    patients = small_cohort[100:132]
    batches_before = service.batches
    real = service.predict_now

    def flaky(batch, options):
        if any(p.patient_id == patients[5].patient_id for p in batch):
            raise RuntimeError("backend exploded")
        return real(batch, options)

    monkeypatch.setattr(service, "predict_now", flaky)

    def ask(p):
        r = client.post("/v1/predict", headers=AUTH, json={"patients": [as_json(p)], "options": {"k": 2}})
        return p, r

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, patients))
    ref = {x.patient_id: x.probability for x in offline.predict_proba([p for p in patients if p is not patients[5]])}
    for p, r in answers:
        if p is patients[5]:
            assert r.status_code == 500 and r.json()["request_id"] == r.headers["x-request-id"]
            assert "Traceback" not in r.text and "exploded" not in r.text
        else:
            assert r.status_code == 200, r.text
            assert abs(r.json()["predictions"][0]["probability"] - ref[p.patient_id]) < 1e-5
    # coalesced: fewer backend batches than requests (the failing batch is retried one by one)
    assert service.batches - batches_before < len(patients)


def test_real_server_answers_http_like_icl_predict(tiny_model_dir, small_cohort, tmp_path):
    import httpx

    from icl_toolkit.data.cohort import write_cohort

    write_cohort(small_cohort[:80], tmp_path / "pool.jsonl")
    write_cohort(small_cohort[80:84], tmp_path / "q.jsonl")
    icl = Path(sys.executable).parent / "icl"
    common = ["--pool", str(tmp_path / "pool.jsonl"), "--model", str(tiny_model_dir), "--query-tokens", "120",
              "--demo-tokens", "100"]
    res = subprocess.run([str(icl), "predict", "--cohort", str(tmp_path / "q.jsonl"), "--out",
                          str(tmp_path / "p.jsonl"), "--k", "2", *common], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    offline = [json.loads(x) for x in open(tmp_path / "p.jsonl")]
    # a batch waits up to 1 s for company, so a request is surely in flight when SIGTERM comes below
    (tmp_path / "card.toml").write_text('owner = "ADRD ML team"\ncontact = "adrd-ml@example.org"\n'
                                        'review_date = 2027-06-30\nintended_use = "research"\n')
    server = start_local_server([*common, "--max-wait-ms", "1000", "--monitor-dir", str(tmp_path / "mon"),
                                 "--card", str(tmp_path / "card.toml")], timeout_s=60)
    try:
        base = server.base
        payload = {"patients": [as_json(p) for p in small_cohort[80:84]], "options": {"k": 2}}
        r = httpx.post(base + "/v1/predict", json=payload, timeout=120)
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        assert [g["prompt_hash"] for g in got] == [o["prompt_hash"] for o in offline]
        np.testing.assert_allclose([g["probability"] for g in got], [o["probability"] for o in offline], atol=1e-5)
        card = httpx.get(base + "/v1/info", timeout=10).json()["model_card"]
        assert card["owner"] == "ADRD ML team" and card["review_date"] == "2027-06-30"
        assert card["data_provenance"]["pool"].startswith("sha256:")
        assert card["task"]["name"] == "adrd_5y" and "Alzheimer" in card["task"]["question"]  # the pool's task
        fb = {"outcomes": [{"patient_id": small_cohort[80].patient_id, "outcome": 0, "date": "2027-01-01"}]}
        assert httpx.post(base + "/v1/feedback", json=fb, timeout=10).json()["recorded"] == 1
        # graceful shutdown: a request in flight when SIGTERM arrives is still answered
        in_flight: dict = {}
        sender = threading.Thread(target=lambda: in_flight.setdefault(
            "r", httpx.post(base + "/v1/predict", json=payload, timeout=120)))
        sender.start()
        time.sleep(0.4)
        server.process.terminate()
        sender.join(120)
        assert in_flight["r"].status_code == 200 and len(in_flight["r"].json()["predictions"]) == 4
    finally:
        code = server.stop()
    out = server.output()
    assert code in (0, -15)
    assert "POST /v1/predict 200" in out and small_cohort[80].patient_id not in out  # ids and timings, no patient data
    # the monitor log: every prediction, the key outside the log folder, private
    assert len((tmp_path / "mon" / "predictions.jsonl").read_text().splitlines()) == 8
    assert (tmp_path / "mon.key").stat().st_mode & 0o777 == 0o600 and not list((tmp_path / "mon").glob("*.key"))


def test_local_server_that_cannot_start_says_why(tmp_path):
    from icl_toolkit.serve.launch import ServerStartError

    missing = tmp_path / "no_such_pool.jsonl"
    with pytest.raises(ServerStartError, match="no_such_pool.jsonl") as err:
        start_local_server(["--pool", str(missing)], timeout_s=120)
    assert "exit status" in str(err.value) and "healthy" in str(err.value)


# --------------------------------------------------------------------------- bad input and pressure (issue 15)

def test_requests_follow_the_cohort_files_rules(client, small_cohort):
    """The request schema is the cohort format: the same cross-field rules, field by field (a positive label
    without an onset date is valid there, and here)."""
    import datetime as dt

    case = next(p for p in small_cohort[100:] if p.label == 1)
    bad = [as_json(case) | {"outcome_date": None},                                           # label 1, no onset: fine
           as_json(case) | {"outcome_date": str(case.index_date - dt.timedelta(days=30))},   # onset before index
           as_json(small_cohort[101]) | {"index_date": as_json(small_cohort[101])["birth_date"]}]  # index at birth
    inf = as_json(small_cohort[102])
    inf["events"][0]["value"] = float("inf")
    r = client.post("/v1/predict", headers=AUTH | {"Content-Type": "application/json"},
                    content=json.dumps({"patients": bad + [inf]}).encode())  # json.dumps writes Infinity
    assert r.status_code == 422, r.text
    fields = {d["field"] for d in r.json()["detail"]}
    assert {"patients[1].outcome_date", "patients[2].index_date", "patients[3].events[0].value"} <= fields
    assert not any(f.startswith("patients[0]") for f in fields)


def test_options_are_strict(client, small_cohort):
    one = [as_json(small_cohort[100])]
    for options in ({"k": "4"}, {"return_prompt": 0}, {"threshold": "0.5"}, {"k": 2.0}):
        r = client.post("/v1/predict", headers=AUTH, json={"patients": one, "options": options})
        assert r.status_code == 422, (options, r.text)
        assert r.json()["detail"][0]["field"].startswith("options.")


def test_per_request_cost_is_capped(service, small_cohort):
    settings = ServerSettings(api_key=KEY, max_patients=10, max_k=4, max_demos=12, max_request_tokens=3000)
    with TestClient(create_app(lambda: service, settings)) as c:
        _ready(c)
        one = [as_json(small_cohort[100])]
        r = c.post("/v1/predict", headers=AUTH, json={"patients": one, "options": {"k": 5}})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "options.k"
        r = c.post("/v1/predict", headers=AUTH, json={"patients": one * 4, "options": {"k": 4}})
        assert r.status_code == 413 and "16 demonstrations" in r.json()["error"]
        r = c.post("/v1/predict", headers=AUTH, json={"patients": [as_json(p) for p in small_cohort[100:110]],
                                                      "options": {"k": 1}})
        assert r.status_code == 413 and "prompt tokens" in r.json()["error"]
        assert c.get("/v1/info", headers=AUTH).json()["limits"]["max_request_tokens"] == 3000


class SlowService(PredictionService):
    """The real service with a backend that takes ``delay`` seconds per patient (a loaded GPU, say)."""

    delay = 0.25

    def predict_now(self, patients, options):
        time.sleep(self.delay * len(patients))
        return super().predict_now(patients, options)


@pytest.fixture()
def live(tiny_backend_obj, small_cohort, hash_embedder, caplog):
    """Start a real uvicorn server (in a thread) over a slow service; yields a function that starts one."""
    import logging

    from icl_toolkit.serve.app import make_server

    caplog.set_level(logging.INFO)
    started = []

    def start(*, max_queue=256, max_batch=1, grace=30.0, settings=None):
        service = SlowService(tiny_backend_obj, small_cohort[:100], None, CONFIG, embedder=hash_embedder,
                              batching=BatchSettings(max_batch=max_batch, max_wait_ms=5, max_queue=max_queue))
        app = create_app(lambda: service, settings or ServerSettings())
        port = free_port()
        server = make_server(app, port=port, grace_seconds=grace, log_config=None)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, alive=thread.is_alive)
        started.append((server, thread))
        return server, thread, base, service

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(60)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    for word in ("Traceback", "CancelledError", "ClientDisconnect", "Exception in ASGI"):
        assert word not in text


def test_overload_is_refused_at_once_and_admitted_requests_stay_bounded(live, small_cohort):
    import httpx

    server, thread, base, service = live(max_queue=4)
    body = {"patients": [as_json(small_cohort[100])], "options": {"k": 1}}

    def ask(i):
        t0 = time.perf_counter()
        r = httpx.post(base + "/v1/predict", json=body, timeout=60)
        return r, time.perf_counter() - t0

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, range(24)))
    ok = [(r, s) for r, s in answers if r.status_code == 200]
    busy = [(r, s) for r, s in answers if r.status_code == 503]
    assert len(ok) + len(busy) == 24 and ok and busy
    # refused at once with a JSON body, a request id and a Retry-After; admitted ones wait at most the queue's length
    assert all(s < 1.0 and int(r.headers["retry-after"]) >= 1 and r.json()["request_id"] == r.headers["x-request-id"]
               for r, s in busy)
    assert max(s for _, s in ok) < (4 + 1) * SlowService.delay + 2.0
    assert service.refused == len(busy)


def test_work_of_a_client_that_went_away_is_dropped(live, small_cohort):
    import httpx

    server, thread, base, service = live(max_queue=64)
    body = {"patients": [as_json(p) for p in small_cohort[100:112]], "options": {"k": 1}}  # 12 x 0.25 s
    with pytest.raises(httpx.TimeoutException):
        httpx.post(base + "/v1/predict", json=body, timeout=0.6)  # gives up after about 2 patients
    for _ in range(100):
        if service.dropped:
            break
        time.sleep(0.05)
    assert service.dropped >= 8  # its remaining patients left the queue unscored
    time.sleep(3 * SlowService.delay)
    assert service.queued == 0
    t0 = time.perf_counter()
    r = httpx.post(base + "/v1/predict", json={"patients": body["patients"][:1]}, timeout=30)
    assert r.status_code == 200 and time.perf_counter() - t0 < 2.0  # a new request does not wait for the old one


def test_client_that_disconnects_mid_body_leaves_no_traceback(live, small_cohort):
    import httpx

    server, thread, base, service = live()
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n{\"patients\": [")
        time.sleep(0.3)
    time.sleep(0.5)
    r = httpx.post(base + "/v1/predict", json={"patients": [as_json(small_cohort[100])]}, timeout=30)
    assert r.status_code == 200  # the server goes on; the fixture checks the log holds no traceback


def test_sigterm_with_a_backlog_longer_than_the_grace_period(live, small_cohort):
    import signal

    import httpx

    server, thread, base, service = live(max_queue=64, grace=4.0)
    body = {"patients": [as_json(small_cohort[100])], "options": {"k": 1}}
    answers: list = []

    def ask(i):
        try:
            answers.append(httpx.post(base + "/v1/predict", json=body, timeout=60))
        except httpx.TransportError as exc:
            answers.append(exc)

    senders = [threading.Thread(target=ask, args=(i,)) for i in range(40)]  # 40 x 0.25 s = 10 s of work
    for t in senders:
        t.start()
    time.sleep(1.0)
    t0 = time.perf_counter()
    server.handle_exit(signal.SIGTERM, None)
    for t in senders:
        t.join(30)
    thread.join(30)
    took = time.perf_counter() - t0
    assert not thread.is_alive() and took < 4.0 + 1.5, took  # exited within the grace period
    assert len(answers) == 40 and all(isinstance(r, httpx.Response) for r in answers), answers
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["content-type"] == "application/json"
            assert r.json()["request_id"] == r.headers["x-request-id"] and "shutting down" in r.json()["error"]


def test_monitor_log_feedback_and_card_over_http(service, small_cohort, tmp_path):
    from icl_toolkit.evaluation.monitor import MonitorLog, monitor_report, parse_window
    from icl_toolkit.evaluation.monitor.log import FEEDBACK, PREDICTIONS

    monitor = MonitorLog(tmp_path / "mon", b"s" * 32, model={"model": "tiny"})
    card = {"owner": "ADRD team", "intended_use": "research", "data_provenance": {"pool": "sha256:abc"}}
    app = create_app(lambda: service, ServerSettings(api_key=KEY), monitor=monitor, card=card)
    patients = small_cohort[100:104]
    with TestClient(app) as c:
        _ready(c)
        r = c.post("/v1/predict", json={"patients": [as_json(p) for p in patients], "options": {"k": 2}},
                   headers=AUTH)
        assert r.status_code == 200
        info = c.get("/v1/info", headers=AUTH).json()
        assert info["model_card"]["owner"] == "ADRD team" and info["monitor"]["predictions_logged"] == 4
        # written once the service loaded: the pool summary icl monitor compares with, without ids
        reference = json.loads((tmp_path / "mon" / "reference.json").read_text())
        assert reference["patients"] == 100 and len(reference["rows"]) == 100 and reference["neighbours"]
        assert all(set(n) == {"demo_vote", "demo_similarity"} for n in reference["neighbours"])
        assert small_cohort[0].patient_id not in json.dumps(reference)
        fb = {"outcomes": [{"patient_id": patients[0].patient_id, "outcome": 1, "date": "2027-02-01"},
                           {"patient_id": patients[1].patient_id, "outcome": 0, "date": "2027-02-01"}]}
        assert c.post("/v1/feedback", json=fb).status_code == 401  # authenticated like the rest of /v1/*
        r = c.post("/v1/feedback", json=fb, headers=AUTH)
        assert r.status_code == 200 and (r.json()["recorded"], r.json()["duplicates"]) == (2, 0)
        r = c.post("/v1/feedback", json=fb, headers=AUTH)  # sent twice: idempotent
        assert r.status_code == 200 and (r.json()["recorded"], r.json()["duplicates"]) == (0, 2)
        r = c.post("/v1/feedback", headers=AUTH, json={"outcomes": [
            {"patient_id": patients[2].patient_id, "outcome": 0, "date": "2027-02-01"},
            {"patient_id": "nobody-we-saw", "outcome": 1, "date": "2027-02-01"}]})
        assert r.status_code == 404 and r.json()["detail"][0]["field"] == "outcomes[1].patient_id"
        r = c.post("/v1/feedback", headers=AUTH, json={"outcomes": [
            {"patient_id": patients[0].patient_id, "outcome": 0, "date": "2027-02-01"}]})
        assert r.status_code == 409 and "recorded for this patient before" in r.json()["detail"][0]["msg"]
        r = c.post("/v1/feedback", headers=AUTH, json={"outcomes": [
            {"patient_id": patients[2].patient_id, "outcome": 2, "date": "2027-02-01"}]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "outcomes[0].outcome"
    monitor.close()
    assert len((tmp_path / "mon" / FEEDBACK).read_text().splitlines()) == 2  # nothing of the refused requests
    logged = (tmp_path / "mon" / PREDICTIONS).read_text()
    assert all(p.patient_id not in logged for p in patients)
    rep = monitor_report(tmp_path / "mon", parse_window("30d"))
    assert rep["windows"][0]["volume"] == 4 and rep["windows"][0]["outcomes"] == 2


def test_feedback_without_monitor_is_refused_clearly(client):
    r = client.post("/v1/feedback", headers=AUTH, json={"outcomes": [{"patient_id": "a", "outcome": 1,
                                                                       "date": "2027-01-01"}]})
    assert r.status_code == 501 and "--monitor-dir" in r.json()["error"]
