from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_synth_throughput_quick(tmp_path: Path) -> None:
    out = tmp_path / "synth.csv"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synth_throughput.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [row["stage"].split(" ")[0] for row in rows] == ["generate", "write", "validate", "serialize", "generate"]
    assert all(int(row["patients"]) == 500 and float(row["seconds"]) > 0 for row in rows)
