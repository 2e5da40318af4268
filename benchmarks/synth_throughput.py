"""How fast the synthetic cohort generator, the writer, the validator and the serializer run.

Target (issue 2): 10,000 patients in well under a minute on 2 cores.

    .venv/bin/python benchmarks/synth_throughput.py            # full: 10,000 patients
    .venv/bin/python benchmarks/synth_throughput.py --quick    # 500 patients, a few seconds

Writes benchmarks/results/synth_throughput.csv (one row per stage) with machine info.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS  # noqa: E402
from _common import machine as machine_info

from icl_toolkit.data.cohort import validate_cohort, write_cohort  # noqa: E402
from icl_toolkit.data.serialize import serialize_history  # noqa: E402
from icl_toolkit.data.synth import SynthConfig, generate_cohort  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="500 patients, for a smoke test")
    ap.add_argument("--out", type=Path, default=RESULTS / "synth_throughput.csv")
    args = ap.parse_args()
    n = 500 if args.quick else args.n
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.jsonl"
        t = time.perf_counter()
        patients = generate_cohort(SynthConfig(n=n, seed=1))
        rows.append(("generate (with rationales)", time.perf_counter() - t))
        t = time.perf_counter()
        write_cohort(patients, path)
        rows.append(("write JSONL (atomic)", time.perf_counter() - t))
        size_mb = path.stat().st_size / 1e6
        t = time.perf_counter()
        report = validate_cohort(path)
        rows.append(("validate JSONL", time.perf_counter() - t))
        assert report.ok, report.issues[:3]
        t = time.perf_counter()
        for p in patients:
            serialize_history(p)
        rows.append(("serialize histories (no budget)", time.perf_counter() - t))
    total = sum(s for _, s in rows[:2])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine = machine_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stage", "patients", "seconds", "patients_per_second", "file_mb", "peak_rss_mb", "machine"])
        for stage, secs in rows + [("generate + write (target < 60 s for 10,000)", total)]:
            w.writerow([stage, n, f"{secs:.2f}", f"{n / secs:.0f}", f"{size_mb:.1f}", f"{peak_mb:.0f}", machine])
    for stage, secs in rows:
        print(f"{stage:40s} {secs:7.2f} s  {n / secs:9.0f} patients/s")
    print(f"{'generate + write':40s} {total:7.2f} s  (file {size_mb:.1f} MB, peak RSS {peak_mb:.0f} MB)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
