"""The monitoring path end to end on this machine (``make monitor-demo``, about 2 minutes on 2 cores).

Starts ``icl serve --monitor-dir`` on loopback with a model card, sends the first ``--n`` test patients of the
``make demo`` cohort (zero-shot, one per request), reports their outcomes through ``POST /v1/feedback`` (each
one twice: the second is counted as a duplicate), then runs ``icl monitor`` against the demonstration pool.

    .venv/bin/python recipes/monitor_demo.py --demo-dir demo_out --out monitor_out [--n 120]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx

from icl_toolkit.serve.launch import ServerStartError, start_local_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-dir", type=Path, default=Path("demo_out"))
    ap.add_argument("--out", type=Path, default=Path("monitor_out"))
    ap.add_argument("--n", type=int, default=120)
    args = ap.parse_args()
    pool, test = args.demo_dir / "splits" / "train.jsonl", args.demo_dir / "splits" / "test.jsonl"
    if not test.exists():
        raise SystemExit(f"{test} is missing: run `make demo` first (it writes the cohort and its splits).")
    args.out.mkdir(parents=True, exist_ok=True)
    card = args.out / "card.toml"
    card.write_text('owner = "icl-toolkit demo"\ncontact = "demo@example.org"\nreview_date = 2027-06-30\n'
                    'intended_use = "Demonstration of monitoring on synthetic patients."\n'
                    'out_of_scope_use = "Real patients."\n')
    env = os.environ | {"ICL_MONITOR_KEY": os.environ.get("ICL_MONITOR_KEY") or secrets.token_hex(32)}
    try:
        server = start_local_server(["--pool", str(pool), "--query-tokens", "160", "--monitor-dir",
                                     str(args.out / "mon"), "--card", str(card), "--log-level", "warning"],
                                    env=env, capture_output=False)
    except ServerStartError as exc:
        raise SystemExit(str(exc)) from None
    base = server.base
    with server:
        patients = [json.loads(line) for line in test.read_text().splitlines()[:args.n]]
        for i, p in enumerate(patients, 1):
            r = httpx.post(base + "/v1/predict", json={"patients": [p], "options": {"k": 0, "demos": "none"}},
                           timeout=120)
            r.raise_for_status()
            if i % 20 == 0:
                print(f"predicted {i}/{len(patients)}", flush=True)
        outcomes = [{"patient_id": p["patient_id"], "outcome": p["label"],
                     "date": p.get("outcome_date") or p["index_date"]} for p in patients]
        for _ in range(2):
            r = httpx.post(base + "/v1/feedback", json={"outcomes": outcomes}, timeout=60)
            print("feedback:", r.json(), flush=True)
        print("model card:", json.dumps(httpx.get(base + "/v1/info", timeout=10).json()["model_card"]), flush=True)
    icl = Path(sys.executable).parent / "icl"
    subprocess.run([str(icl), "monitor", "--dir", str(args.out / "mon"), "--window", "30d", "--pool", str(pool)],
                   check=True)


if __name__ == "__main__":
    main()
