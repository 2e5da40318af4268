"""`icl monitor` on a large log: is a daily job cheap? (issue 34 target: 100,000 predictions in under a minute on
2 cores.)

Writes a monitor folder as `icl serve --monitor-dir` would: ``--predictions`` records over a year (30-day windows),
the patients drawn from a synthetic cohort (each prediction a new pseudonymous patient), logged through
``MonitorLog`` with the pool's codes known, the pool's ``reference.json`` with its neighbour sample, outcomes for
the first half of the year, and a calibration file; then times the whole ``icl monitor`` command (a new process:
reading the log, every window's estimates and drift tests, the page and the JSON).

    .venv/bin/python benchmarks/monitor_scale.py                        # 100,000 predictions
    .venv/bin/python benchmarks/monitor_scale.py --quick                # 3,000 predictions, for the smoke test

Writes monitor_scale.csv (seconds, windows, log size, peak memory, machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, machine, write_csv  # noqa: E402

from icl_toolkit.data.synth import SynthConfig, generate_cohort  # noqa: E402
from icl_toolkit.evaluation.monitor import MonitorLog  # noqa: E402
from icl_toolkit.evaluation.monitor.reference import pool_reference  # noqa: E402

KEY = b"benchmark-monitor-key-0123456789"
START = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def write_log(folder: Path, n: int, seed: int = 0) -> Path:
    """The monitor folder (and a calibration file beside it) for ``n`` predictions; returns the calibration file."""
    people = generate_cohort(SynthConfig(n=3000, seed=seed, rationales=False))
    pool, stream = people[:1500], people[1500:]
    rng = np.random.default_rng(seed)
    log = MonitorLog(folder, KEY, model={"model": "bench"}, pool=pool)
    ref = pool_reference(pool)
    ref["neighbours"] = [
        {"demo_vote": float(v), "demo_similarity": float(s)}
        for v, s in zip(rng.integers(0, 5, 300) / 4, rng.normal(0.8, 0.05, 300))
    ]
    log.write_reference(ref)
    year = dt.timedelta(days=365)
    batch = 500
    for start in range(0, n, batch):
        size = min(batch, n - start)
        picks = rng.integers(0, len(stream), size)
        patients = [dataclasses.replace(stream[i], patient_id=f"{stream[i].patient_id}-{start + j}") for j, i in enumerate(picks)]
        risk = np.array([p.metadata["true_risk"] for p in patients])
        preds = [
            {"probability": float(r), "model_id": "bench", "prompt_hash": "sha256:0", "template": "few_shot",
             "demos": [{"patient_id": pool[int(d)].patient_id, "score": float(rng.normal(0.8, 0.05)),
                        "label": pool[int(d)].label} for d in rng.integers(0, len(pool), 4)]}
            for r in np.clip(risk + rng.normal(0, 0.05, size), 0.001, 0.999)
        ]
        log.record_predictions(patients, preds, when=START + year * (start / n))
        if start < n / 2:
            log.record_outcomes(
                [(p.patient_id, int(p.label), p.index_date) for p in patients], when=START + year * (start / n)
            )
    log.close()
    cal = folder.parent / "calibration.jsonl"
    cal_people = people[:1000]
    cal.write_text("".join(
        json.dumps({"probability": float(np.clip(p.metadata["true_risk"] + rng.normal(0, 0.05), 0.001, 0.999)),
                    "label": p.label}) + "\n" for p in cal_people))
    return cal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="3,000 predictions (the smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "monitor_scale.csv")
    args = ap.parse_args()
    if args.quick:
        args.predictions = 3000
    where = machine()
    print(f"machine: {where}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "mon"
        t = time.perf_counter()
        cal = write_log(folder, args.predictions)
        print(f"wrote {args.predictions} predictions in {time.perf_counter() - t:.0f} s", flush=True)
        icl = Path(sys.executable).parent / "icl"
        cmd = [str(icl), "monitor", "--dir", str(folder), "--window", "30d", "--calibration", str(cal),
               "--out", str(Path(tmp) / "report")]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if done.returncode not in (0, 3):
            raise SystemExit(done.stdout + done.stderr)
        report = json.loads((Path(tmp) / "report" / "monitor.json").read_text())
        log_mb = (folder / "predictions.jsonl").stat().st_size / 1e6
    row = {"predictions": args.predictions, "windows": len(report["windows"]), "outcomes": report["feedback"],
           "log_mb": round(log_mb, 1), "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb),
           "target_seconds": 60, "met": seconds < 60, "machine": where}
    print(row, flush=True)
    write_csv(args.out, [row])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
