"""The vLLM backend: parity with the transformers backend on the embedded model (opt-in: make test-vllm),
and a clear error where vLLM is not installed (default suite)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from icl_toolkit.errors import ConfigError

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

    return HFBackend("default", batch_size=1, progress=False), VLLMBackend("default", dtype="float32",
                                                                            max_model_len=2048, progress=False)


@pytest.fixture(scope="module")
def prompts(small_cohort, engines, hash_embedder):
    from icl_toolkit.predict import PredictConfig, Predictor
    from icl_toolkit.prompting import PromptConfig
    from icl_toolkit.retrieve import RetrievalConfig

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


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_icl_predict_backend_vllm_without_vllm_says_how_to_install(small_cohort, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from icl_toolkit.cohort import write_cohort

    write_cohort(small_cohort[:3], tmp_path / "c.jsonl")
    icl = Path(sys.executable).parent / "icl"
    res = subprocess.run([str(icl), "predict", "--cohort", str(tmp_path / "c.jsonl"), "--demos", "none", "--out",
                          str(tmp_path / "p.jsonl"), "--backend", "vllm"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert 'pip install "icl-toolkit[gpu]"' in res.stderr  # printed literally, not eaten as markup
