"""Scale-out cost and rate: single-process `icl predict` against `--engine ray` with 1 and 2 replicas.

    .venv/bin/python benchmarks/ray_scale.py                 # full run (about 10 min on 2 cores)
    .venv/bin/python benchmarks/ray_scale.py --quick --model PATH   # the smoke test (tiny model, a few patients)

Each arm predicts the same test patients of the `make paper` cohort (label-only demos, k=2, the default
retriever) twice, in one run: once with ``--limit 1`` and once with all ``--n`` patients, so that fixed costs
(process and model start, Ray start, replica start, index) and the steady rate separate:

* start-up = the 1-patient run's wall time (for Ray: minus single-process's, i.e. what Ray adds);
* steady rate = (n - 1) / (wall(n) - wall(1)) patients/s.

Every run is a fresh `icl` process, as a user runs it. The single process uses both cores (torch threads);
each Ray replica gets one CPU (Ray sets its threads to 1), so 2 replicas on 2 cores is the honest comparison.
The projection to N replicas multiplies the measured 1-replica rate by N and by the measured 2-replica
efficiency; it is a projection, not a measurement (a GPU replica's own rate comes from gpu_throughput.py).
Writes ray_scale.csv.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, demo_cohort, machine, write_csv  # noqa: E402

ICL = str(Path(sys.executable).with_name("icl"))


def _wall(args: list[str]) -> float:
    start = time.perf_counter()
    r = subprocess.run([ICL, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"icl {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=24, help="test patients per run")
    ap.add_argument("--quick", action="store_true", help="4 patients, single process and 1 replica (smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "ray_scale.csv")
    args = ap.parse_args()
    from icl_toolkit.data.cohort import write_cohort

    n = 4 if args.quick else args.n
    pool, test = demo_cohort(n, quick=args.quick)
    where = machine()
    print(f"machine: {where}", flush=True)
    arms = [("single process", [])] + [(f"ray, {r} replica{'s' if r > 1 else ''}", ["--engine", "ray", "--replicas",
                                                                                 str(r)]) for r in (1, 2)]
    if args.quick:
        arms = arms[:2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_cohort(pool, d / "pool.jsonl")
        write_cohort(test[:n], d / "test.jsonl")
        common = ["predict", "--cohort", str(d / "test.jsonl"), "--pool", str(d / "pool.jsonl"), "--model",
                  args.model, "--k", "2", "--demos", "label", "--show", "0"]
        if args.quick:
            common += ["--query-tokens", "200", "--demo-tokens", "120"]
        walls = {}
        for name, extra in arms:
            one = _wall(common + extra + ["--out", str(d / f"{len(rows)}a"), "--limit", "1"])
            full = _wall(common + extra + ["--out", str(d / f"{len(rows)}b")])
            walls[name] = (one, full)
            rows.append({"arm": name, "patients": n, "wall_1_s": round(one, 2), "wall_n_s": round(full, 2),
                         "steady_patients_per_s": round((n - 1) / max(full - one, 1e-9), 4), "machine": where})
            print(f"{name:22s} 1 patient {one:6.1f}s   {n} patients {full:6.1f}s", flush=True)
    single = rows[0]
    for r in rows:
        r["startup_added_s"] = round(r["wall_1_s"] - single["wall_1_s"], 2)
        r["rate_vs_single"] = round(r["steady_patients_per_s"] / single["steady_patients_per_s"], 3)
    if len(rows) == 3:
        one, two = rows[1]["steady_patients_per_s"], rows[2]["steady_patients_per_s"]
        eff = two / (2 * one)
        for k in (8, 64, 512):
            rate = k * one * min(eff, 1.0)
            rows.append({"arm": f"projection: {k} replicas like these", "patients": 1_000_000, "wall_1_s": "",
                         "wall_n_s": round(1_000_000 / rate, 0), "steady_patients_per_s": round(rate, 3),
                         "startup_added_s": rows[1]["startup_added_s"], "rate_vs_single": "",
                         "machine": f"projection from {where}: 1-replica rate x {k} x 2-replica efficiency "
                                    f"{eff:.2f}"})
    write_csv(args.out, rows)
    print(f"{'arm':36s} {'pat/s':>8s} {'x single':>9s} {'start-up +s':>11s}")
    for r in rows:
        print(f"{r['arm']:36s} {r['steady_patients_per_s']:8.3f} {str(r['rate_vs_single']):>9s} "
              f"{r['startup_added_s']:>11}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
