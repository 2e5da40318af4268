"""AUROC against labelled patients used: label vs rationale SFT and the in-context arms, at each data scale.

    .venv/bin/python recipes/data_scale.py --run 1400=results/paper_powered \
        --run 350=results/paper_powered/scale_350 --out results/paper_powered/data_scale.png

Each ``--run N=DIR`` is an ``icl compare`` output folder whose SFT checkpoints were
trained on N labelled patients and whose demonstration pool (and baseline
training data) is the same N patients, scored on the same test patients. The
plot has one line per arm kind (label-only SFT, rationale SFT read directly
and in reason mode, the base model with label-only demos, with rationale
demos, and the logistic-regression baseline), AUROC with its bootstrap 95% interval against N; the zero-shot base
model (which uses no labelled patient) is a horizontal band. Writes the plot
and ``data_scale.csv`` beside it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

SERIES = {  # line label -> arm name in results.csv (the same in both recipes)
    "label-only SFT (read directly)": "label_sft / none / score",
    "rationale SFT (read directly)": "rationale_sft / none / score",
    "rationale SFT (reason mode: writes, then answers)": "rationale_sft / none / reason",
    "base + label-only demos (k=4)": "base / label k=4 similar / score",
    "base + rationale demos (k=4)": "base / rationale k=4 similar / score",
    "logistic regression (codes + age + sex)": "logreg codes+age+sex",
}
ZERO_SHOT = "base / none / score"


def _rows(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / "results.csv"
    if not path.exists():
        sys.exit(f"{path}: not found; run the comparison into {folder} first (make paper-compare / paper-scale).")
    with open(path, newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, metavar="N=DIR",
                    help="labelled patients used = compare output folder (repeat for each scale)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs = {}
    for item in args.run:
        n, sep, folder = item.partition("=")
        if not sep or not n.isdigit():
            sys.exit(f"--run {item!r}: expected N=DIR, e.g. 350=results/paper_powered/scale_350")
        runs[int(n)] = _rows(Path(folder))
    table = []
    for n, rows in sorted(runs.items()):
        for label, arm in SERIES.items():
            if arm in rows:
                r = rows[arm]
                table.append({"labelled_patients": n, "series": label, "arm": arm, "auroc": float(r["auroc"]),
                              "lo": float(r["auroc_lo"]), "hi": float(r["auroc_hi"]), "test_n": r["n"],
                              "cases": r["cases"]})
    if not table:
        sys.exit(f"none of the arms {sorted(SERIES.values())} is in the results.csv of {', '.join(args.run)}; "
                 "these are the arm names of recipes/paper_powered.toml and recipes/paper_scale.toml.")
    sizes = {(t["test_n"], t["cases"]) for t in table}
    if len(sizes) > 1:
        sys.exit(f"the runs scored different test sets ({', '.join(f'{n} patients, {c} cases' for n, c in sorted(sizes))}); "
                 "every scale must score the same test patients (--test) for the AUROCs to be comparable.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    scales = sorted(runs)
    for i, label in enumerate(SERIES):
        pts = [t for t in table if t["series"] == label]
        if not pts:
            continue
        x = [t["labelled_patients"] * (1 + 0.02 * (i - 3)) for t in pts]  # small offsets keep the bars apart
        y = [t["auroc"] for t in pts]
        err = [[t["auroc"] - t["lo"] for t in pts], [t["hi"] - t["auroc"] for t in pts]]
        style = "s--" if label.startswith("logistic") else "o-"
        ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=label)
    zs = [rows[ZERO_SHOT] for rows in runs.values() if ZERO_SHOT in rows]
    if zs:
        z = zs[0]
        ax.axhspan(float(z["auroc_lo"]), float(z["auroc_hi"]), color="grey", alpha=0.15)
        ax.axhline(float(z["auroc"]), color="grey", lw=1, label="base zero-shot (no labelled patients)")
    ax.axhline(0.5, color="black", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(scales)
    ax.set_xticklabels([str(s) for s in scales])
    ax.set_xlabel("labelled patients used (SFT training set = demonstration pool)")
    ax.set_ylabel("test AUROC (95% bootstrap CI)")
    ((test_n, cases),) = sizes
    ax.set_title(f"Data scale: {test_n} test patients ({cases} cases)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: no point hidden
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]) if table else ["labelled_patients"])
        writer.writeheader()
        writer.writerows(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
