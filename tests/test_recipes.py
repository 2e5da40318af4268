"""Scripts under recipes/ that turn committed results into figures (no model runs)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["name", "n", "cases", "auroc", "auroc_lo", "auroc_hi"]


def _results(folder: Path, rows: list[tuple[str, float]], n: int = 400, cases: int = 62) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for name, auc in rows:
            w.writerow({"name": name, "n": n, "cases": cases, "auroc": auc, "auroc_lo": auc - 0.08,
                        "auroc_hi": auc + 0.08})
    return folder


def _data_scale(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "data_scale.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_data_scale_plots_every_series_at_every_scale(tmp_path: Path) -> None:
    arms = ["label_sft / none / score", "rationale_sft / none / score", "rationale_sft / none / reason",
            "base / label k=4 similar / score", "base / rationale k=4 similar / score", "logreg codes+age+sex"]
    big = _results(tmp_path / "big", [("base / none / score", 0.46)] + [(a, 0.6) for a in arms])
    small = _results(tmp_path / "small", [("base / none / score", 0.46), ("unrelated arm", 0.9)]
                     + [(a, 0.55) for a in arms[:4]])
    out = tmp_path / "plot" / "scale.png"
    r = _data_scale("--run", f"1400={big}", "--run", f"350={small}", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0
    table = list(csv.DictReader(open(out.with_suffix(".csv"))))
    # the 350 run lacks the two rationale-demo / logistic arms: only what is there is plotted, smallest scale first
    assert [(int(t["labelled_patients"]), t["arm"]) for t in table] == (
        [(350, a) for a in arms[:4]] + [(1400, a) for a in arms])
    assert {float(t["auroc"]) for t in table if t["labelled_patients"] == "350"} == {0.55}
    assert all(float(t["lo"]) < float(t["auroc"]) < float(t["hi"]) for t in table)


def test_data_scale_refuses_runs_on_different_test_sets(tmp_path: Path) -> None:
    a = _results(tmp_path / "a", [("label_sft / none / score", 0.6)])
    b = _results(tmp_path / "b", [("label_sft / none / score", 0.6)], n=80, cases=13)
    r = _data_scale("--run", f"1400={a}", "--run", f"350={b}", "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "different test sets" in r.stderr and "80 patients, 13 cases" in r.stderr


def test_data_scale_names_a_missing_results_file_and_a_bad_run(tmp_path: Path) -> None:
    r = _data_scale("--run", f"350={tmp_path / 'nowhere'}", "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "nowhere/results.csv: not found" in r.stderr
    r = _data_scale("--run", f"many={tmp_path}", "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "expected N=DIR" in r.stderr
    empty = _results(tmp_path / "e", [("something else", 0.6)])
    r = _data_scale("--run", f"350={empty}", "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "none of the arms" in r.stderr
