"""Where the synthetic outcome's signal lives: ``presence`` against ``trajectory`` cohorts.

For each seed and signal, a cohort of ``--n`` patients (2,000 by default, the same seed for both signals) and
the same stratified 5-fold cross-validation (shuffled with seed 0): the out-of-fold AUROC of

- the oracle (each patient's true risk, which no model reading the history can reach),
- the presence-only logistic regression (codes present, age, sex; C = 1: the baseline the issue measured),
- LightGBM trees on windowed code counts and value aggregates (30 days, 1 year, all history; the stated
  default parameters, no tuning),

and the presence-only regression's shortfall from the oracle. The design goal of the ``trajectory`` cohort: a
shortfall at least 0.05 larger than on the ``presence`` cohort of the same size and seed.

    .venv/bin/python benchmarks/synth_signal.py                 # seeds 1,2,3; about 2 minutes on 2 cores
    .venv/bin/python benchmarks/synth_signal.py --quick         # 400 patients, one seed (the test)

Writes ``results/synth_signal.csv`` (one row per seed and signal) and ``synth_signal_summary.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, machine, write_csv  # noqa: E402

from icl_toolkit.data.synth import SynthConfig, generate_cohort  # noqa: E402
from icl_toolkit.evaluation import tabular as tab  # noqa: E402
from icl_toolkit.evaluation.baselines import bag_of_codes  # noqa: E402


def out_of_fold(patients: list, folds: int, seed: int) -> dict[str, float]:
    """Out-of-fold AUROC of the oracle, the presence-only regression and the windowed trees."""
    import lightgbm as lgb
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    y = np.array([p.label for p in patients])
    presence = DictVectorizer().fit_transform(bag_of_codes(p) for p in patients)
    windowed = tab.FeatureSpace().fit_transform(patients)
    p_lr, p_gbt = np.zeros(len(y)), np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        lr = LogisticRegression(C=1.0, max_iter=5000).fit(presence[train], y[train])
        p_lr[test] = lr.predict_proba(presence[test])[:, 1]
        gbt = lgb.LGBMClassifier(**tab.GBT_DEFAULT, random_state=seed, n_jobs=2, verbose=-1, deterministic=True,
                                 force_row_wise=True).fit(windowed[train], y[train])
        p_gbt[test] = gbt.predict_proba(windowed[test])[:, 1]
    oracle = roc_auc_score(y, [p.metadata["true_risk"] for p in patients])
    return {"oracle": oracle, "presence_logreg": roc_auc_score(y, p_lr), "windowed_gbt": roc_auc_score(y, p_gbt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="400 patients, seed 1")
    ap.add_argument("--out", type=Path, default=RESULTS / "synth_signal.csv")
    args = ap.parse_args()
    if args.quick:
        args.n, args.seeds = 400, [1]
    where = machine()
    print(f"machine: {where}", flush=True)
    rows = []
    for seed in args.seeds:
        for signal in ("presence", "trajectory"):
            start = time.perf_counter()
            patients = generate_cohort(SynthConfig(n=args.n, seed=seed, rationales=False, signal=signal))
            auc = out_of_fold(patients, args.folds, 0)
            row = {"signal": signal, "seed": seed, "n": args.n, "cases": sum(p.label for p in patients),
                   "folds": args.folds, **{k: round(v, 4) for k, v in auc.items()},
                   "shortfall_logreg": round(auc["oracle"] - auc["presence_logreg"], 4),
                   "shortfall_gbt": round(auc["oracle"] - auc["windowed_gbt"], 4),
                   "seconds": round(time.perf_counter() - start, 1), "machine": where}
            rows.append(row)
            print({k: v for k, v in row.items() if k != "machine"}, flush=True)
    summary = []
    for seed in args.seeds:
        pres, traj = (next(r for r in rows if r["seed"] == seed and r["signal"] == s) for s in ("presence",
                                                                                               "trajectory"))
        summary.append({"seed": seed, "n": args.n,
                        "shortfall_presence": pres["shortfall_logreg"], "shortfall_trajectory": traj["shortfall_logreg"],
                        "extra_shortfall": round(traj["shortfall_logreg"] - pres["shortfall_logreg"], 4),
                        "target_0_05_met": traj["shortfall_logreg"] - pres["shortfall_logreg"] >= 0.05,
                        "gbt_recovers": round(traj["windowed_gbt"] - traj["presence_logreg"], 4)})
    write_csv(args.out, rows)
    write_csv(args.out.with_name(args.out.stem + "_summary.csv"), summary)
    for s in summary:
        print(s, flush=True)


if __name__ == "__main__":
    main()
