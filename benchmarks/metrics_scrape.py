"""What a Prometheus scrape of `icl serve`'s ``GET /metrics`` costs, with 16 scrapers at once.

The script starts the server itself on loopback (zero-shot, the embedded SmolLM2 unless ``--model``), answers a few
predictions so every metric family has samples, then runs ``--clients`` threads that each scrape ``/metrics``
``--scrapes`` times back to back. It reports, side by side in one run:

- the server's own time per scrape, read from its ``icl_request_duration_seconds{route="/metrics"}`` histogram
  (sum / count: from the request's arrival in the app to its last byte, the number the target is about);
- the client's wall time per scrape (p50, p99; loopback HTTP and Python's client included);
- the in-process cost of rendering the registry (``ServerMetrics.exposition``) at the same content.

    .venv/bin/python benchmarks/metrics_scrape.py                    # about a minute on 2 cores
    .venv/bin/python benchmarks/metrics_scrape.py --quick --model PATH

Writes metrics_scrape.csv (results/ by default) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, demo_cohort, machine, write_csv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--scrapes", type=int, default=200, help="Scrapes per client.")
    ap.add_argument("--predictions", type=int, default=8, help="Predictions answered before scraping.")
    ap.add_argument("--quick", action="store_true", help="A few scrapes (the smoke test).")
    ap.add_argument("--out", type=Path, default=RESULTS / "metrics_scrape.csv")
    args = ap.parse_args()
    if args.quick:
        args.scrapes, args.predictions = 10, 2

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from icl_toolkit.data.cohort import patient_to_dict
    from icl_toolkit.serve.launch import start_local_server

    _, test = demo_cohort(n_test=args.predictions, quick=args.quick)
    server = start_local_server(["--model", args.model, "--query-tokens", "200"])  # no --pool: zero-shot
    try:
        base = server.base
        with httpx.Client(timeout=600) as c:
            for p in test[: args.predictions]:
                body = {"patients": [patient_to_dict(p)], "options": {"k": 0}}
                assert c.post(base + "/v1/predict", json=body).status_code == 200

        def server_time() -> tuple[float, float]:
            text = httpx.get(base + "/metrics", timeout=30).text
            got = {"sum": 0.0, "count": 0.0}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name.startswith("icl_request_duration_seconds_") and s.labels.get("route") == "/metrics":
                        got[s.name.rsplit("_", 1)[1]] = s.value
            return got["sum"], got["count"]

        sum0, count0 = server_time()
        walls: list[float] = []
        lock = threading.Lock()

        def scraper() -> None:
            mine = []
            with httpx.Client(timeout=30) as c:
                for _ in range(args.scrapes):
                    t = time.perf_counter()
                    r = c.get(base + "/metrics")
                    mine.append(time.perf_counter() - t)
                    assert r.status_code == 200
            with lock:
                walls.extend(mine)

        threads = [threading.Thread(target=scraper) for _ in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        sum1, count1 = server_time()
        size = len(httpx.get(base + "/metrics", timeout=30).content)
    finally:
        server.stop()

    # the in-process rendering of a registry of the same shape (one app's metrics, the same families)
    from icl_toolkit.serve.metrics import ServerMetrics

    m = ServerMetrics(lambda: None)
    for route in ("/v1/predict", "/metrics", "/health"):
        m.observe_request(route, "GET", 200, 0.01)
    m.observe_batch(4, 0.5)
    n_render = 2000 if not args.quick else 50
    t = time.perf_counter()
    for _ in range(n_render):
        m.exposition()
    render_ms = (time.perf_counter() - t) / n_render * 1000

    server_ms = (sum1 - sum0) / max(count1 - count0, 1) * 1000
    walls_ms = np.array(walls) * 1000
    row = {
        "clients": args.clients,
        "scrapes": len(walls),
        "server_ms_per_scrape": round(server_ms, 3),
        "client_p50_ms": round(float(np.percentile(walls_ms, 50)), 2),
        "client_p99_ms": round(float(np.percentile(walls_ms, 99)), 2),
        "scrapes_per_s": round(len(walls) / elapsed, 1),
        "render_ms_in_process": round(render_ms, 3),
        "exposition_bytes": size,
        "target_ms": 1.0,
        "met": server_ms < 1.0,
        "machine": machine(),
    }
    write_csv(args.out, [row])
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
