"""The simulated deployments of ``make monitor-streams``, small, on the random test model and the hashing embedder:
each stream replayed through the service's HTTP app on a simulated clock, ``icl monitor`` before and after the
outcomes arrive, and the alert matrix: every alert a stream is built to raise fires there, the stable stream raises
none, and no stream raises one it was not expected to."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "monitor_streams.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("monitor_streams", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alert_matrix_of_the_simulated_streams(recipe, tmp_path, monkeypatch):
    out, results = tmp_path / "work", tmp_path / "results"
    argv = ["monitor_streams.py", "--model", "tiny", "--embedder", "hash", "--out", str(out), "--results",
            str(results), "--pool", "300", "--calibration", "200", "--window-size", "150", "--stable-windows", "2",
            "--stable-window-size", "150"]
    monkeypatch.setattr(sys, "argv", argv)
    recipe.main()
    summary = json.loads((results / "summary.json").read_text())
    streams = summary["streams"]
    assert set(streams) == set(recipe.STREAMS)
    for name, s in streams.items():
        assert s["missing"] == [], (name, s)      # every alert the stream is built to raise fires
        assert s["unexpected"] == [], (name, s)   # and nothing it was not expected to raise
    assert streams["stable"]["alerts_before_outcomes"] == []
    for alert, home in (("code_mix", "coding_change"), ("unseen_codes", "coding_change"),
                        ("vocabulary", "coding_change"), ("neighbour_similarity", "mismatched_pool")):
        where = {n for n, s in streams.items() if alert in s["alerts_before_outcomes"]}
        assert home in where and "stable" not in where
    # before the outcomes: estimates, no realized AUROC; after: both, for every window
    before = json.loads((results / "stable" / "before_outcomes.json").read_text())
    after = json.loads((results / "stable" / "after_outcomes.json").read_text())
    assert before["feedback"] == 0 and all(w.get("auroc") is None and w["estimated_auroc"] for w in before["windows"])
    assert after["feedback"] == 300 and all(w["auroc"] is not None for w in after["windows"])
    assert after["calibrated_on"]["patients"] == 200
    assert (results / "stable" / "page" / "index.html").exists()
    # resumed: a second run sends nothing again (every patient is already in the log) and records no outcome twice
    monkeypatch.setattr(sys, "argv", [*argv, "--streams", "stable"])
    recipe.main()
    lines = (out / "stable" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 300
    assert json.loads((results / "summary.json").read_text())["streams"]["stable"]["missing"] == []
