"""The vLLM backend: parity with the transformers backend on the embedded model, LoRA adapters per
request on one engine, full checkpoints on their own engine, the openai backend against a real
``vllm serve`` and ``icl predict --backend vllm`` (opt-in: make test-vllm, in file order: the last
tests release the engine); and a clear error where vLLM is not installed (default suite)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.models import checkpoint_id

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_a_one_line_error_with_the_install_command():
    from icl_toolkit.backends import make_backend

    with pytest.raises(ConfigError, match=r'pip install "icl-toolkit\[gpu\]"'):
        make_backend("vllm", model="default")


@pytest.fixture(scope="module")
def engines():
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.backends.vllm import VLLMBackend

    # LoRA on from the start, so that adapters later in this file join this engine without a restart
    return HFBackend("default", batch_size=1, progress=False), VLLMBackend(
        "default", dtype="float32", max_context=2048, max_lora_rank=8, progress=False)


@pytest.fixture(scope="module")
def prompts(small_cohort, engines, hash_embedder):
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.predictor import Predictor
    from icl_toolkit.prompting.config import PromptConfig
    from icl_toolkit.retrieval.config import RetrievalConfig

    hf, _ = engines
    texts = []
    for demos, k in (("none", 1), ("rationale", 2)):
        cfg = PredictConfig(retrieval=RetrievalConfig(k=k), prompt=PromptConfig(demos=demos, query_tokens=200,
                                                                                  demo_tokens=120))
        pred = Predictor(hf, cfg, embedder=hash_embedder, progress=False).fit(small_cohort[:150])
        queries = small_cohort[150:162]
        texts += [bp.text for bp in pred.build_prompts(queries, pred.retrieve(queries))]
    return texts


@pytest.mark.vllm
def test_vllm_scores_agree_with_transformers(engines, prompts):
    from scipy.stats import spearmanr

    from icl_toolkit.backends import choice_probabilities

    hf, vl = engines
    a = np.array([choice_probabilities(x)[0] for x in hf.score(prompts, [" Yes", " No"])])
    b = np.array([choice_probabilities(x)[0] for x in vl.score(prompts, [" Yes", " No"])])
    diff = float(np.abs(a - b).max())
    rho = float(spearmanr(a, b).statistic)
    print(f"\nparity on {len(prompts)} prompts: max |P(yes) hf - vllm| = {diff:.2e}, Spearman = {rho:.5f}")
    assert diff <= 0.02 and rho > 0.99
    # multi-token choices go through prompt log-probs and agree too
    multi = [" Yes, within five years", " No"]
    m_hf, m_vl = np.array(hf.score(prompts[:4], multi)), np.array(vl.score(prompts[:4], multi))
    assert np.abs(m_hf - m_vl).max() < 0.05


@pytest.mark.vllm
def test_vllm_generation_is_batched_and_cut_at_stop(engines, prompts):
    from icl_toolkit.backends import GenerationParams

    hf, vl = engines
    params = GenerationParams(max_new_tokens=24, stop=("\n",))
    out = vl.generate(prompts[:4], params)
    assert len(out) == 4 and all("\n" not in t for t in out)
    # greedy decoding: the same first words as transformers
    ref = hf.generate(prompts[:4], params)
    assert sum(a.split()[:3] == b.split()[:3] for a, b in zip(out, ref)) >= 3


@pytest.mark.vllm
def test_teacher_rationales_on_vllm_equal_transformers(engines, small_cohort):
    from icl_toolkit.rationales.config import TeacherConfig
    from icl_toolkit.rationales.teacher import RationaleTeacher

    hf, vl = engines
    config = TeacherConfig(max_new_tokens=40, history_tokens=300)
    patients = [p for p in small_cohort if p.label is not None][:3]
    a = RationaleTeacher(hf, config).generate(patients)
    b = RationaleTeacher(vl, config).generate(patients)
    # fp32 on both sides and greedy decoding: the same texts, hence the same grounding
    assert [r.texts for r in a] == [r.texts for r in b]
    assert [r.grounding for r in a] == [r.grounding for r in b]


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_icl_predict_backend_vllm_without_vllm_says_how_to_install(small_cohort, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from icl_toolkit.data.cohort import write_cohort

    write_cohort(small_cohort[:3], tmp_path / "c.jsonl")
    icl = Path(sys.executable).parent / "icl"
    res = subprocess.run([str(icl), "predict", "--cohort", str(tmp_path / "c.jsonl"), "--demos", "none", "--out",
                          str(tmp_path / "p.jsonl"), "--backend", "vllm"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert 'pip install "icl-toolkit[gpu]"' in res.stderr  # printed literally, not eaten as markup


def _p_yes(backend, prompts):
    from icl_toolkit.backends import choice_probabilities

    return np.array([choice_probabilities(x)[0] for x in backend.score(prompts, [" Yes", " No"])])


@pytest.fixture(scope="module")
def adapters(small_cohort, tmp_path_factory):
    """Two LoRA adapters of the embedded model from icl finetune (a few strong steps, so they move P(yes))."""
    from icl_toolkit.training.config import FinetuneConfig
    from icl_toolkit.training.sft import Finetuner

    out = {}
    for target in ("label", "rationale"):
        cfg = FinetuneConfig(target=target, lora=True, lora_r=8, max_steps=3, batch_size=4, lr=5e-3,
                             query_tokens=120, seed=0)
        folder = tmp_path_factory.mktemp("lora") / target
        Finetuner(cfg, base="default", progress=False).fit(small_cohort[:12], folder)
        out[target] = folder
    return out


@pytest.mark.vllm
def test_lora_adapters_are_chosen_per_request_on_one_engine(engines, prompts, adapters):
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.backends.vllm import VLLMBackend

    hf, vl = engines
    engine = vl.llm
    sub = prompts[:8]
    base_p = _p_yes(vl, sub)
    for target, folder in adapters.items():
        for on_engine in (vl.with_adapter(folder), VLLMBackend(str(folder), dtype="float32", max_context=2048,
                                                                progress=False)):
            assert on_engine.llm is engine  # same engine: the base model was not loaded again
            got = _p_yes(on_engine, sub)
            ref = _p_yes(HFBackend(str(folder), batch_size=1, progress=False), sub)  # adapter merged by peft
            moved = float(np.abs(ref - base_p).mean())
            print(f"\nLoRA {target}: max |P(yes) hf - vllm| = {np.abs(got - ref).max():.2e}; "
                  f"mean shift from base {moved:.3f}")
            assert moved > 0.01  # the adapter is really applied ...
            assert np.abs(got - ref).max() <= 0.02  # ... and the same way as transformers does
            assert on_engine.model_id == checkpoint_id(folder)
    assert np.abs(_p_yes(vl, sub) - base_p).max() < 1e-6  # requests without an adapter still get the base


@pytest.mark.vllm
def test_adapter_of_another_base_is_refused(engines, adapters, tmp_path):
    import json
    import shutil

    from icl_toolkit.core.errors import ModelNotFoundError

    _, vl = engines
    moved = tmp_path / "other"
    shutil.copytree(adapters["label"], moved)
    meta = json.loads((moved / "icl-checkpoint.json").read_text())
    meta["base_id"] = "SomeOrg/another-model"
    (moved / "icl-checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ModelNotFoundError, match="field 'base_id'"):
        vl.with_adapter(moved)
    with pytest.raises(ConfigError, match="not a LoRA adapter"):
        vl.with_adapter("default")


@pytest.mark.vllm
def test_openai_backend_against_a_real_vllm_serve_with_adapters(engines, prompts, adapters):
    """One `vllm serve` with the base model and two icl finetune --lora adapters (--enable-lora --lora-modules):
    the openai backend picks the adapter from --model's folder, and each agrees with transformers within 1e-4."""
    from icl_toolkit.backends import GenerationParams
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.backends.openai_api import OpenAIBackend
    from icl_toolkit.serve.launch import start_vllm_server

    hf, _ = engines
    with start_vllm_server(lora_modules={t: folder for t, folder in adapters.items()}) as server:
        url = server.base + "/v1"
        client = OpenAIBackend("default", url=url, batch_size=16, progress=False)
        assert client.served_model == "smollm2" and client.max_context == 2048 and client.adapter_of is None
        a, b = _p_yes(hf, prompts), _p_yes(client, prompts)
        print(f"\nopenai backend on vllm serve: max |P(yes) hf - server| = {np.abs(a - b).max():.2e} on "
              f"{len(prompts)} prompts")
        assert np.abs(a - b).max() <= 1e-4
        assert client.next_token_scoring is True  # one pass per prompt: the server answered logprob_token_ids
        # (the echo path is compared on a server without LoRA, in the benchmark test below: with LoRA enabled,
        # vLLM 0.32's engine fails on prompt log-probabilities, as vLLM issues #16668 and #29955 report)
        params = GenerationParams(max_new_tokens=16, stop=("\n",))
        out, ref = client.generate(prompts[:4], params), hf.generate(prompts[:4], params)
        assert sum(x.split()[:3] == y.split()[:3] for x, y in zip(out, ref)) >= 3
        for target, folder in adapters.items():
            sft = OpenAIBackend(str(folder), url=url, batch_size=16, progress=False)  # chosen by its folder
            assert (sft.served_model, sft.adapter_of, sft.max_context) == (target, "smollm2", 2048)
            assert sft.model_id == checkpoint_id(folder)
            got = _p_yes(sft, prompts)
            ref_sft = _p_yes(HFBackend(str(folder), batch_size=1, progress=False), prompts)  # merged by peft
            print(f"adapter {target} served: max |P(yes) hf - server| = {np.abs(got - ref_sft).max():.2e}; "
                  f"mean shift from base {np.abs(got - b).mean():.3f}")
            assert np.abs(got - b).mean() > 0.01  # the adapter is applied ...
            assert np.abs(got - ref_sft).max() <= 1e-4  # ... as transformers applies it
            assert sft.next_token_scoring is True  # one pass with an adapter too (no prompt log-probs needed)


@pytest.mark.vllm
def test_one_pass_computes_at_most_half_the_prompt_tokens_of_echo(tmp_path):
    """benchmarks/openai_passes.py --quick on the CPU server: the server's own counters, before and after."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "openai_passes.py"
    r = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = list(csv.DictReader(open(tmp_path / "openai_passes_summary.csv")))
    print(f"\nprompt tokens computed per prediction: echo {summary['tokens_computed_echo']}, one pass "
          f"{summary['tokens_computed_one_pass']} (ratio {float(summary['computed_ratio']):.3f})")
    assert float(summary["computed_ratio"]) <= 0.5
    assert float(summary["max_p_yes_difference"]) <= 1e-4  # the one-pass and echo paths: the same P(yes)


@pytest.mark.vllm
def test_full_checkpoint_gets_its_own_engine(engines, prompts, small_cohort, tmp_path):
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.backends.vllm import VLLMBackend
    from icl_toolkit.training.config import FinetuneConfig
    from icl_toolkit.training.sft import Finetuner

    _, vl = engines
    cfg = FinetuneConfig(target="label", max_steps=2, batch_size=4, lr=1e-3, train_layers=2, query_tokens=120)
    Finetuner(cfg, base="default", progress=False).fit(small_cohort[:8], tmp_path / "full")
    full = VLLMBackend(str(tmp_path / "full"), dtype="float32", max_context=2048, progress=False)
    with pytest.raises(ConfigError, match="was released"):
        _ = vl.llm  # one engine per process: the base engine made room for the checkpoint's
    sub = prompts[:8]
    got, ref = _p_yes(full, sub), _p_yes(HFBackend(str(tmp_path / "full"), batch_size=1, progress=False), sub)
    print(f"\nfull checkpoint: max |P(yes) hf - vllm| = {np.abs(got - ref).max():.2e}")
    assert np.abs(got - ref).max() <= 0.02


@pytest.mark.vllm
def test_ray_data_llm_processor_scores_as_transformers(engines, prompts):
    """vllm_processor_config through Ray's own ray.data.llm processor (build_processor), run on vLLM's CPU build:
    the answer slot's P(yes) equals the transformers backend's within 1e-4."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from icl_toolkit.core.models import resolve_lm
    from icl_toolkit.inference.ray import vllm_processor_config

    hf, _ = engines
    ids = [hf.encode(c)[-1] for c in (" Yes", " No")]
    kwargs, pre, post = vllm_processor_config(str(resolve_lm("default")), ids, batch_size=8, max_model_len=2048)
    # this machine: no GPU (one CPU bundle), float32, a small share of host memory, no Ray Serve for engine metrics
    kwargs["engine_kwargs"].update(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.15)
    kwargs.update(placement_group_config={"bundles": [{"CPU": 1}]}, log_engine_metrics=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        processor = build_processor(vLLMEngineProcessorConfig(**kwargs), preprocess=pre, postprocess=post)
        rows = processor(ray.data.from_items([{"prompt": t, "i": i} for i, t in enumerate(prompts)])).take_all()
    finally:
        ray.shutdown()
    got = np.array([r["probability"] for r in sorted(rows, key=lambda r: r["i"])])
    ref = _p_yes(hf, prompts)
    print(f"\nray.data.llm processor vs hf: max |P(yes)| difference {np.abs(got - ref).max():.2e} on {len(rows)}")
    assert len(rows) == len(prompts) and np.abs(got - ref).max() <= 1e-4


@pytest.mark.vllm
def test_icl_predict_backend_vllm_single_process_and_on_ray_replicas(small_cohort, tmp_path):
    """icl predict with label demos: transformers (float32), vLLM in this process, and vLLM replicas on Ray (the
    toolkit's vLLM backend in each actor, --engine ray): the same demos and prompts, P(yes) within 1e-4."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from icl_toolkit.backends.vllm import release_engine
    from icl_toolkit.data.cohort import write_cohort
    from icl_toolkit.inference.output import read_sharded_records

    release_engine()  # the CLI starts its own
    write_cohort(small_cohort[:60], tmp_path / "pool.jsonl")
    write_cohort(small_cohort[200:206], tmp_path / "c.jsonl")
    icl = Path(sys.executable).parent / "icl"
    common = ["predict", "--cohort", str(tmp_path / "c.jsonl"), "--pool", str(tmp_path / "pool.jsonl"), "--k", "2",
              "--demos", "label", "--max-context", "2048", "--query-tokens", "200", "--demo-tokens", "120",
              "--dtype", "float32"]
    runs = {"hf": ["--backend", "hf"], "vllm": ["--backend", "vllm"],
            "ray": ["--backend", "vllm", "--engine", "ray", "--replicas", "1", "--chunk-size", "3"]}
    for name, extra in runs.items():
        res = subprocess.run([str(icl), *common, *extra, "--out", str(tmp_path / name)], capture_output=True,
                             text=True, timeout=1200)
        assert res.returncode == 0, res.stderr[-3000:]
    rows = {b: [json.loads(x) for x in open(tmp_path / b)] for b in ("hf", "vllm")}
    order = [r["patient_id"] for r in rows["hf"]]
    rows["ray"] = sorted(read_sharded_records(tmp_path / "ray"), key=lambda r: order.index(r["patient_id"]))
    assert len(rows["ray"]) == 6 and not any("error" in r for r in rows["ray"])
    for name in ("vllm", "ray"):
        assert [r["prompt_hash"] for r in rows[name]] == [r["prompt_hash"] for r in rows["hf"]]
        assert [[d["patient_id"] for d in r["demos"]] for r in rows[name]] == [
            [d["patient_id"] for d in r["demos"]] for r in rows["hf"]]
        diff = max(abs(a["probability"] - b["probability"]) for a, b in zip(rows[name], rows["hf"]))
        print(f"\nicl predict --backend vllm{' --engine ray' if name == 'ray' else ''} vs hf: max |P(yes)| "
              f"difference {diff:.2e}")
        assert diff <= 1e-4
    single = max(abs(a["probability"] - b["probability"]) for a, b in zip(rows["ray"], rows["vllm"]))
    print(f"ray replicas vs single process (both vLLM): {single:.2e}")
    assert single <= 1e-4
