"""Order ensembles: what `--orders M` costs against one order, side by side in one run.

    .venv/bin/python benchmarks/order_ensemble.py              # 48 test patients, the embedded model (~6 min on 2 cores)
    .venv/bin/python benchmarks/order_ensemble.py --quick --model PATH   # seconds, for the smoke test

The same patients, the same retrieved demos (k=4 rationale demos, prognostic retriever, the powered recipe's
budgets and dtype), predicted with ``orders`` 1, 3 and 5 by one loaded predictor, one after another in one
process, each timed end to end (prompt building, batched scoring, bookkeeping; the retrieval done once
beforehand and shared). The rows give seconds per patient, prompt tokens computed per patient, their ratio to one
order, and how much P(yes) moves between the first order and the ensemble. Target (issue 32): a 5-order ensemble
costs at most 5x one order on transformers. Writes order_ensemble.csv.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, demo_cohort, machine, write_csv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="test patients")
    ap.add_argument("--orders", default="1,3,5")
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="bfloat16", help="the powered recipe's (float32 where the CPU has no bf16)")
    ap.add_argument("--quick", action="store_true", help="a few patients (the smoke test)")
    ap.add_argument("--out", type=Path, default=RESULTS / "order_ensemble.csv")
    args = ap.parse_args()

    from icl_toolkit.backends.options import EngineOptions, open_backend
    from icl_toolkit.core import hardware
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.predictor import Predictor

    n = 6 if args.quick else args.n
    pool, test = demo_cohort(n, quick=args.quick)
    dtype = args.dtype if hardware.cpu_bf16() or args.dtype != "bfloat16" else "float32"
    backend = open_backend(args.model, EngineOptions(dtype=dtype), progress=False)
    budgets = {"k": 4, "demos": "rationale", "query_tokens": 160, "demo_tokens": 100}
    plain = Predictor(backend, PredictConfig.from_options(**budgets), progress=False).fit(pool)
    retrievals = plain.retrieve(test)
    plain.predict_proba(test[:2], retrievals[:2])  # warm-up (first-call allocations), not timed
    rows, first = [], None
    for m in [int(x) for x in args.orders.split(",")]:
        predictor = Predictor(backend, PredictConfig.from_options(**budgets, orders=m), progress=False).fit(pool)
        start = time.perf_counter()
        out = []
        for i in range(0, len(test), 8):  # the chunks of icl predict
            out += predictor.predict_proba(test[i : i + 8], retrievals[i : i + 8])
        seconds = (time.perf_counter() - start) / len(test)
        tokens = float(np.mean([p.prompt_tokens for p in out])) * m
        probs = np.array([p.probability for p in out])
        if first is None:
            first = {"seconds": seconds, "tokens": tokens, "probs": probs}
        rows.append(
            {
                "orders": m,
                "patients": len(test),
                "seconds_per_patient": round(seconds, 4),
                "prompt_tokens_per_patient": round(tokens, 1),
                "cost_ratio": round(seconds / first["seconds"], 3),
                "token_ratio": round(tokens / first["tokens"], 3),
                "mean_abs_change_vs_one_order": round(float(np.mean(np.abs(probs - first["probs"]))), 5),
                "mean_order_sd": round(float(np.mean([p.order_sd or 0.0 for p in out])), 5),
                "dtype": dtype,
                "machine": machine(),
            }
        )
        print(rows[-1], flush=True)
    write_csv(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
