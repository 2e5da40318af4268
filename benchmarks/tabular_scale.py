"""Memory and time of the tabular baselines' features at pool sizes up to 100,000 patients.

Patients are generated one at a time and streamed straight into the windowed feature matrix
(``FeatureSpace.fit_transform`` takes any iterable), so the cohort itself is never held in memory; then the
trees are fit once with the stated default parameters. Peak resident memory is read from the kernel
(``ru_maxrss``) after each size; sizes run in increasing order, so each peak bounds that size's cost.

    .venv/bin/python benchmarks/tabular_scale.py                 # 10,000 and 100,000 patients; ~3 min on 2 cores
    .venv/bin/python benchmarks/tabular_scale.py --quick         # 2,000 patients (the test)

Writes ``results/tabular_scale.csv``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, machine, write_csv  # noqa: E402

from icl_toolkit.data.synth import SynthConfig, iter_synthetic_patients  # noqa: E402
from icl_toolkit.evaluation import tabular as tab  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "tabular_scale.csv")
    args = ap.parse_args()
    if args.quick:
        args.sizes = [2000]
    where = machine()
    print(f"machine: {where}", flush=True)
    rows = []
    for n in args.sizes:
        labels: list[int] = []

        def stream(n: int = n, labels: list[int] = labels):
            for p in iter_synthetic_patients(SynthConfig(n=n, seed=7, rationales=False)):
                labels.append(int(p.label or 0))
                yield p

        space = tab.FeatureSpace()
        start = time.perf_counter()
        x = space.fit_transform(stream())
        build = time.perf_counter() - start
        y = np.array(labels)
        import lightgbm as lgb

        start = time.perf_counter()
        lgb.LGBMClassifier(**tab.GBT_DEFAULT, random_state=0, n_jobs=2, verbose=-1, force_row_wise=True).fit(x, y)
        fit = time.perf_counter() - start
        row = {"patients": n, "features": x.shape[1], "nonzero": x.nnz, "matrix_mb": space.stats["matrix_mb"],
               "generate_and_build_s": round(build, 1), "gbt_fit_s": round(fit, 1),
               "peak_rss_mb": round(peak_mb(), 0), "machine": where}
        rows.append(row)
        print({k: v for k, v in row.items() if k != "machine"}, flush=True)
        del x
    write_csv(args.out, rows)


if __name__ == "__main__":
    main()
