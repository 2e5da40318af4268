"""The package as users get it: a wheel built from this tree, installed into a fresh virtual environment outside
the repository, renders prompts and predicts (the templates ship as package data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{args[:3]} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (so the build leaves nothing in the repository)."""
    src = tmp_path_factory.mktemp("src") / "icl-toolkit"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "*_out", "results", "benchmarks", "tests", "build", "dist", "*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", out, src])
    (whl,) = out.glob("icl_toolkit-*.whl")
    return whl


def test_wheel_holds_the_templates(wheel: Path):
    """The templates live in the repository's top-level prompts/ and ship in the wheel as icl_toolkit/prompts."""
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("icl_toolkit/prompts/")}
    templates = {p.name for p in (REPO / "prompts").iterdir()}
    assert templates <= shipped and "few_shot_label.j2" in shipped
    assert not (REPO / "icl_toolkit" / "prompts").exists()
    assert "icl_toolkit/data/meds/code_maps/mimic_iv.toml" in names  # --code-map mimic-iv from an installed wheel


def test_a_source_checkout_reads_the_top_level_prompts():
    from icl_toolkit.prompting.templates import prompts_dir

    assert prompts_dir() == REPO / "prompts"


def test_installed_wheel_predicts_outside_the_repository(wheel: Path, tmp_path: Path, tiny_model_dir: Path):
    venv = tmp_path / "fresh-venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    # The fresh environment borrows the third-party dependencies (torch, transformers, ...) of this one through a
    # path file, without its editable install of this project; the project itself comes only from the wheel.
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ICL_PROMPTS")}
    where = _run([py, "-c", "import icl_toolkit, icl_toolkit.prompting.templates as p; print(icl_toolkit.__file__); "
                  "print(p.prompts_dir())"], cwd=work, env=env).stdout.split()
    assert all(Path(w).is_relative_to(venv) for w in where), where

    from icl_toolkit.data.cohort import write_cohort
    from icl_toolkit.data.synth import SynthConfig, generate_cohort

    cohort = generate_cohort(SynthConfig(n=40, seed=5))
    write_cohort(cohort[:30], work / "pool.jsonl")
    write_cohort(cohort[30:34], work / "test.jsonl")
    _run([venv / "bin" / "icl", "predict", "--cohort", "test.jsonl", "--pool", "pool.jsonl", "--model",
          tiny_model_dir, "--k", "2", "--demos", "label", "--demo-tokens", "100", "--query-tokens", "120",
          "--out", "preds.jsonl"], cwd=work, env=env)
    records = [json.loads(line) for line in (work / "preds.jsonl").read_text().splitlines()]
    assert [r["patient_id"] for r in records] == [p.patient_id for p in cohort[30:34]]
    assert all(r["template"] == "few_shot_label" and len(r["demos"]) == 2 and 0 <= r["probability"] <= 1
               for r in records)
