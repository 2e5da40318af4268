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


def test_gpu_throughput_quick_on_the_hf_backend(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "gpu.csv"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--quick", "--backend", "hf",
                        "--model", str(tiny_model_dir), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert [(row["mode"], row["k"]) for row in rows] == [("score", "0"), ("score", "2"), ("reason", "0"),
                                                         ("reason", "2")]
    assert all(int(row["prompts"]) == 4 and float(row["prompts_per_s"]) > 0 for row in rows)
    # demonstrations lengthen the prompt; reason mode generates
    assert float(rows[1]["mean_prompt_tokens"]) > float(rows[0]["mean_prompt_tokens"])
    assert all(int(row["generated_tokens"]) > 0 for row in rows[2:])
    assert "cores" in rows[0]["machine"] and out.with_suffix(".png").stat().st_size > 0
