"""The package's face: ``import icl_toolkit as icl`` is cheap, exports what a researcher needs, documents each
export, and runs the README's Python example."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import icl_toolkit as icl
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import write_cohort

REPO = Path(__file__).resolve().parent.parent


def test_importing_the_package_loads_nothing_heavy():
    code = ("import sys, icl_toolkit as icl; assert icl.__version__; "
            "heavy = [m for m in ('torch', 'transformers', 'faiss', 'sklearn', 'numpy') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_export_resolves_and_is_documented():
    assert set(icl.__all__) == {"__version__", *icl._EXPORTS} and len(icl.__all__) == len(set(icl.__all__))
    missing = []
    for name in icl.__all__:
        if name == "__version__":
            continue
        obj = getattr(icl, name)
        doc = inspect.getdoc(obj) or ""
        if not doc:
            missing.append(f"{name}: no docstring")
        elif inspect.isfunction(obj):
            sig = inspect.signature(obj)
            need = ["Returns:", "Raises:"] + (["Args:"] if sig.parameters else [])
            missing += [f"{name}: no {section}" for section in need if section not in doc]
            documented = set(re.findall(r"^\s{4}(\w+)(?:,\s*\w+)*:", doc.split("Args:")[-1].split("Returns:")[0],
                                        re.M))
            for section in re.findall(r"^\s{4}(\w+(?:, \w+)+):", doc, re.M):
                documented |= set(section.split(", "))
            missing += [f"{name}: argument {p} not under Args" for p in sig.parameters if p not in documented]
        elif isinstance(obj, type) and issubclass(obj, BaseModel):
            missing += [f"{name}.{f}: no docstring" for f, info in obj.model_fields.items() if not info.description]
        elif isinstance(obj, type) and not dataclasses.is_dataclass(obj) and not issubclass(obj, Exception):
            params = [p for p in inspect.signature(obj).parameters if p not in ("self", "args", "kwargs")]
            if params and "Args:" not in doc:
                missing.append(f"{name}: no Args")
    assert not missing, "\n".join(missing)


def test_the_readme_python_example_runs(tmp_path, small_cohort):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- python-example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 8 <= len(block.strip().splitlines()) <= 14
    splits = tmp_path / "demo_out" / "splits"
    splits.mkdir(parents=True)
    write_cohort(small_cohort[:60], splits / "train.jsonl")
    write_cohort(small_cohort[60:70], splits / "test.jsonl")
    r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:3]] == [p.patient_id for p in small_cohort[60:63]]
    assert "'n': 3" in lines[-1] and "'auroc'" in lines[-1]
    records = [json.loads(line) for line in (tmp_path / "demo_out" / "api.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["demos"]) == 4 for r in records)


def test_predict_file_checks_its_arguments_before_loading_anything(tmp_path, small_cohort):
    write_cohort(small_cohort[:5], tmp_path / "c.jsonl")
    config = icl.PredictConfig.from_options(k=2)
    with pytest.raises(ConfigError, match="--pool is required"):
        icl.predict_file(tmp_path / "c.jsonl", tmp_path / "o.jsonl", config, model="no-such-model")
    with pytest.raises(ConfigError, match="--retrieval .* is for --engine local"):
        icl.predict_file(tmp_path / "c.jsonl", tmp_path / "o", config, pool=tmp_path / "c.jsonl",
                         retrieval=tmp_path / "r.json", ray=icl.RayOptions())
    with pytest.raises(ConfigError, match="--meds-labels reads a MEDS root on Ray"):
        icl.predict_file(tmp_path / "c.jsonl", tmp_path / "o.jsonl", config, pool=tmp_path / "c.jsonl",
                         meds_labels=tmp_path / "labels.parquet")
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o").exists()


def test_predict_file_and_build_index_on_the_tiny_model(tmp_path, small_cohort, tiny_model_dir):
    write_cohort(small_cohort[:60], tmp_path / "pool.jsonl")
    write_cohort(small_cohort[60:64], tmp_path / "test.jsonl")
    config = icl.PredictConfig.from_options(k=2, demos="label", query_tokens=120, demo_tokens=100)
    index = icl.build_index(icl.read_cohort(tmp_path / "pool.jsonl"), config.retrieval, out=tmp_path / "idx",
                            progress=False)
    assert isinstance(index, icl.DemoIndex) and (tmp_path / "idx" / "index.json").is_file()
    run = icl.predict_file(tmp_path / "test.jsonl", tmp_path / "p.jsonl", config, model=str(tiny_model_dir),
                           pool=tmp_path / "pool.jsonl", index=tmp_path / "idx", progress=False)
    assert isinstance(run, icl.PredictRun) and run.written == 4 and run.failed == 0
    assert [r["patient_id"] for r in run.records] == [p.patient_id for p in small_cohort[60:64]]
    again = icl.predict_file(tmp_path / "test.jsonl", tmp_path / "p.jsonl", config, model=str(tiny_model_dir),
                             pool=tmp_path / "pool.jsonl", index=tmp_path / "idx", resume=True, progress=False)
    assert again.written == 0 and again.records == run.records
