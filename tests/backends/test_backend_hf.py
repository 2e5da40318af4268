"""The transformers backend on a tiny random Llama: exact numbers, padding, batching, choices."""

from __future__ import annotations

import pytest
import torch

from icl_toolkit.backends import GenerationParams, choice_probabilities, get_backend_class, make_backend
from icl_toolkit.core.errors import ConfigError

PROMPTS = [
    "<|im_start|>system\nYou judge dementia risk.<|im_end|>\n<|im_start|>user\nAge 80. Dx I10.<|im_end|>\n<|im_start|>assistant\n",
    "Age at index: 71. Sex: male. Answer:",
    "A longer record. " * 40 + "Will this patient develop dementia? Answer:",
    "Short",
]


def _manual(backend, prompt, choice_ids):
    ids = torch.tensor([backend.encode(prompt)])
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0, -1]
    lp = torch.log_softmax(logits.float(), -1)
    return [float(lp[i]) for i in choice_ids]


def test_score_equals_manual_log_softmax(tiny_backend_obj):
    b = tiny_backend_obj
    tok = b.tokenizer
    got = b.score(PROMPTS, ["Yes", "No"])
    for prompt, row in zip(PROMPTS, got):
        # the choice token is the one that follows the prompt in context
        ids = [b.encode(prompt + c)[len(b.encode(prompt))] for c in ("Yes", "No")]
        assert row == pytest.approx(_manual(b, prompt, ids), abs=1e-5)
    assert tok(" Yes", add_special_tokens=False).input_ids[0] != tok("Yes", add_special_tokens=False).input_ids[0]


def test_batched_equals_single_and_left_right_padding_agree(tiny_backend_obj):
    b = tiny_backend_obj
    single = [b.score(p, [" Yes", " No"]) for p in PROMPTS]
    old = (b.batch_size, b.padding_side)
    try:
        b.batch_size = 4
        left = b.score(PROMPTS, [" Yes", " No"])
        b.padding_side = "right"
        right = b.score(PROMPTS, [" Yes", " No"])
    finally:
        b.batch_size, b.padding_side = old
    for s, lft, rgt in zip(single, left, right):
        assert lft == pytest.approx(s, abs=1e-5)
        assert rgt == pytest.approx(s, abs=1e-5)


def test_input_order_is_restored_after_length_sorting(tiny_backend_obj):
    b = tiny_backend_obj
    forward = b.score(PROMPTS, ["Yes", "No"])
    backward = b.score(PROMPTS[::-1], ["Yes", "No"])[::-1]
    assert forward == backward


def test_multi_token_choices_sum_their_tokens(tiny_backend_obj):
    b = tiny_backend_obj
    prompt = "Age at index: 71. Answer:"
    choice = " Definitely not demented"
    ctx = b.encode(prompt)
    cont = b.encode(prompt + choice)[len(ctx):]
    assert len(cont) > 1
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(b.model(input_ids=ids).logits[0].float(), -1)
    expected = sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
    got = b.score(prompt, [" Yes", choice])
    assert got[1] == pytest.approx(expected, abs=1e-4)
    assert got[0] == pytest.approx(b.score(prompt, [" Yes", " No"])[0], abs=1e-5)


def test_choice_probabilities_normalise_over_choices():
    p = choice_probabilities([-1.0, -2.0])
    assert sum(p) == pytest.approx(1.0) and p[0] > p[1]
    assert choice_probabilities([-1000.0, -1001.0])[0] == pytest.approx(1 / (1 + pow(2.718281828, -1)), abs=1e-6)


def test_generate_is_batched_greedy_and_cut_at_stop(tiny_backend_obj):
    b = tiny_backend_obj
    params = GenerationParams(max_new_tokens=6)
    batch = b.generate(PROMPTS[:3], params)
    assert isinstance(batch, list) and len(batch) == 3
    assert [b.generate(p, params) for p in PROMPTS[:3]] == batch
    text = batch[1]
    if text:
        cut = b.generate(PROMPTS[1], GenerationParams(max_new_tokens=6, stop=(text[-1],)))
        assert text[-1] not in cut


def test_bad_arguments_are_clear_errors(tiny_backend_obj):
    b = tiny_backend_obj
    with pytest.raises(ConfigError, match="choices"):
        b.score("x", "Yes")
    with pytest.raises(ConfigError, match="distinct"):
        b.score("x", ["Yes", "Yes"])
    with pytest.raises(ValueError):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(ValueError):
        GenerationParams(temprature=0.5)  # unknown fields are rejected


def test_prompt_longer_than_context_is_an_error():
    from icl_toolkit.backends.testing import tiny_backend

    b = tiny_backend(max_context=300)
    with pytest.raises(ConfigError, match="context limit"):
        b.score("word " * 400, ["Yes", "No"])


def test_registry_is_lazy_and_suggests_names():
    with pytest.raises(ConfigError, match="Did you mean 'hf'"):
        get_backend_class("hff")
    with pytest.raises(ConfigError, match="Available: hf, openai, vllm"):
        make_backend("llama.cpp")


def test_engine_options_map_to_each_backend_and_refuse_what_it_does_not_use():
    from icl_toolkit.backends.options import EngineOptions, backend_kwargs

    # only what was given is passed on: each backend's constructor holds its own defaults
    assert backend_kwargs("hf", EngineOptions()) == {}
    assert backend_kwargs("hf", EngineOptions(device="cuda", dtype="bfloat16", max_context=4096)) == {
        "device": "cuda", "dtype": "bfloat16", "max_context": 4096}
    vl = backend_kwargs("vllm", EngineOptions(backend="vllm", dtype="float16", gpu_memory_utilization=0.5,
                                              tensor_parallel_size=2, max_lora_rank=16, max_context=2048))
    assert vl == {"dtype": "float16", "max_context": 2048, "gpu_memory_utilization": 0.5,
                  "tensor_parallel_size": 2, "max_lora_rank": 16}
    with pytest.raises(ConfigError, match="gpu-memory-utilization is for vllm; tensor-parallel-size is for vllm"):
        backend_kwargs("hf", EngineOptions(gpu_memory_utilization=0.5, tensor_parallel_size=2))
    with pytest.raises(ConfigError, match="device is for hf"):
        backend_kwargs("vllm", EngineOptions(backend="vllm", device="cuda:1"))
    # vLLM used to take device and batch_size and drop them silently; now they are refused like the rest
    with pytest.raises(ConfigError, match="batch-size is for hf and openai"):
        backend_kwargs("vllm", EngineOptions(backend="vllm", batch_size=4))
    with pytest.raises(ConfigError, match="url is for openai"):
        backend_kwargs("hf", EngineOptions(url="http://x/v1"))
    with pytest.raises(ConfigError, match="dtype is for hf and vllm"):
        backend_kwargs("openai", EngineOptions(backend="openai", url="http://x/v1", dtype="bfloat16"))


def test_each_backend_declares_its_options_as_constructor_arguments():
    import inspect

    from icl_toolkit.backends import BACKENDS, BaseBackend, get_backend_class
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.backends.options import EngineOptions

    fields = set(EngineOptions.model_fields) - {"backend"}
    covered = set()
    for name in BACKENDS:
        cls = get_backend_class(name)
        assert issubclass(cls, BaseBackend)
        params = inspect.signature(cls.__init__).parameters
        declared = set(cls.engine_options)
        assert declared <= fields and declared <= set(params), (name, declared - set(params))
        # an engine option the backend does not declare is not silently swallowed by its constructor
        assert not (fields - declared) & set(params), (name, (fields - declared) & set(params))
        covered |= declared
    assert covered == fields
    defaults = inspect.signature(HFBackend.__init__).parameters
    assert defaults["device"].default == "cpu" and defaults["dtype"].default == "auto"


def test_icl_predict_engine_flags_are_checked_against_the_backend(small_cohort, tmp_path, invoke):
    from icl_toolkit.data.cohort import write_cohort

    write_cohort(small_cohort[:2], tmp_path / "c.jsonl")
    base = ["predict", "--cohort", tmp_path / "c.jsonl", "--demos", "none", "--out", tmp_path / "p.jsonl"]
    code, text = invoke(base + ["--tensor-parallel-size", "2"])
    assert code == 1 and "tensor-parallel-size is for vllm" in text
    code, text = invoke(base + ["--backend", "openai"])
    assert code == 1 and "--url http://HOST:PORT/v1" in text
    code, text = invoke(base + ["--gpu-memory-utilization", "1.5"])
    assert code == 2  # out of range: a usage error before anything loads
