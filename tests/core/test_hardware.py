"""CPU feature detection, what dtype "auto" means, and the bf16 model with its float32 readout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icl_toolkit.backends import choice_probabilities
from icl_toolkit.core import hardware
from icl_toolkit.core.models import fp32_readout, load_lm


def test_auto_dtype_follows_the_detection_and_its_override(monkeypatch):
    monkeypatch.setenv("ICL_CPU_BF16", "1")
    assert hardware.cpu_bf16() and hardware.resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setenv("ICL_CPU_BF16", "0")
    assert not hardware.cpu_bf16() and hardware.resolve_dtype("auto", "cpu") == "float32"
    for explicit in ("float32", "bfloat16", "float16"):
        assert hardware.resolve_dtype(explicit, "cpu") == explicit  # an explicit dtype is never second-guessed
    monkeypatch.delenv("ICL_CPU_BF16")
    # without the override: what the processor says (the kernel's flags agree with PyTorch's own check)
    flags = hardware.cpu_flags()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        assert hardware.cpu_bf16()
    assert hardware.cpu_name() and str(hardware.cpu_bf16()) in ("True", "False")
    assert ("native bf16" in hardware.describe()) and "cores" in hardware.describe()


def test_bf16_model_keeps_a_float32_readout(tiny_model_dir):
    lm32, tok = load_lm(str(tiny_model_dir), dtype="float32")
    lm16, _ = load_lm(str(tiny_model_dir), dtype="bfloat16")
    assert lm16.get_input_embeddings().weight.dtype == torch.bfloat16
    head = lm16.get_output_embeddings()
    assert head.weight.dtype == torch.float32 and head.weight is not lm16.get_input_embeddings().weight
    # the float32 copy is of the bf16-loaded weights (rounded once, never again at the readout)
    assert torch.allclose(head.weight, lm32.get_output_embeddings().weight, rtol=1e-2, atol=1e-3)
    ids = torch.tensor([tok("Patient record: hypertension, type 2 diabetes").input_ids])
    with torch.no_grad():
        out16, out32 = lm16(ids).logits, lm32(ids).logits
    assert out16.dtype == torch.float32
    assert torch.allclose(out16, out32, atol=0.1)  # bf16 body: close, not equal
    assert fp32_readout(lm16) is lm16 and lm16.get_output_embeddings() is head  # idempotent


def test_bf16_backend_probabilities_stay_close(tiny_model_dir, small_cohort):
    from icl_toolkit.backends.hf import HFBackend

    prompts = [f"Patient {p.patient_id}, age {p.age_at_index:.0f}. Dementia within 5 years?" for p in small_cohort[:6]]
    probs = {}
    for dtype in ("float32", "bfloat16"):
        backend = HFBackend(str(tiny_model_dir), dtype=dtype, progress=False)
        assert backend.dtype == dtype
        probs[dtype] = np.array([choice_probabilities(lp)[0] for lp in backend.score(prompts, [" Yes", " No"])])
    assert np.abs(probs["float32"] - probs["bfloat16"]).max() < 0.05
    with pytest.raises(Exception, match="dtype"):
        HFBackend(str(tiny_model_dir), dtype="int8", progress=False)
