from __future__ import annotations

import pytest

from icl_toolkit.core.errors import ModelNotFoundError
from icl_toolkit.core.models import embedder_path, load_tokenizer, smollm2_gguf_path


def test_embedded_files_resolve_without_network() -> None:
    gguf = smollm2_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    assert (embedder_path() / "modules.json").is_file()


def test_default_tokenizer_round_trips(lm_tokenizer) -> None:
    ids = lm_tokenizer("HbA1c 7.4 % (-0.3y)", add_special_tokens=False)["input_ids"]
    assert 3 < len(ids) < 20
    assert lm_tokenizer.decode(ids) == "HbA1c 7.4 % (-0.3y)"
    assert lm_tokenizer.chat_template, "the instruct model's chat template survives the conversion"


def test_local_folder_and_unknown_names(tmp_path, lm_tokenizer) -> None:
    lm_tokenizer.save_pretrained(tmp_path / "tok")
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok("abc")["input_ids"] == lm_tokenizer("abc")["input_ids"]
    with pytest.raises(ModelNotFoundError, match="Unknown model 'no-such/model-xyz'"):
        load_tokenizer("no-such/model-xyz")


def test_default_lm_converts_once_to_fp32_with_logit_parity() -> None:
    import json

    import torch

    from icl_toolkit.core.models import PARITY_TOLERANCE, lm_id, load_lm, resolve_lm

    folder = resolve_lm("default")
    record = json.loads((folder / "icl-conversion.json").read_text())
    assert record["parity_max_abs_logit_diff"] <= PARITY_TOLERANCE and record["dtype"] == "float32"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain checkpoint: savable and trainable
    assert resolve_lm("default") == folder  # converted once, then reused
    model, tok = load_lm("default")
    assert lm_id("default") == "smollm2-135m-instruct"
    assert next(model.parameters()).dtype == torch.float32
    assert not getattr(model, "is_quantized", False)
    with torch.no_grad():
        out = model(**tok("Age at index: 78.", return_tensors="pt")).logits
    assert torch.isfinite(out).all() and out.shape[-1] == model.config.vocab_size


def test_local_checkpoint_and_unknown_lm(tiny_model_dir) -> None:
    from icl_toolkit.core.models import load_lm, resolve_lm

    assert resolve_lm(str(tiny_model_dir)) == tiny_model_dir
    model, _ = load_lm(str(tiny_model_dir))
    assert model.config.hidden_size == 64
    with pytest.raises(ModelNotFoundError, match="Unknown model"):
        resolve_lm("/no/such/folder")
    with pytest.raises(ModelNotFoundError, match="Unknown embedder"):
        from icl_toolkit.core.models import resolve_embedder

        resolve_embedder("not-an-embedder")


def test_a_checkpoint_is_named_by_its_content_not_its_path(tmp_path):
    """A results folder moved or cloned elsewhere still names the same checkpoint; other weights under the same
    path do not pass for it; a sidecar that recorded the folder's path (before content ids) is still read."""
    import shutil

    from icl_toolkit.core.models import checkpoint_id, lm_id, recorded_model_id
    from icl_toolkit.inference.output import OutputFile

    ckpt = tmp_path / "a" / "label"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    (ckpt / "icl-checkpoint.json").write_text('{"target": "label"}')
    (ckpt / "loss_curve.png").write_bytes(b"plot")
    first = checkpoint_id(ckpt)
    assert first.startswith("label@sha256:") and lm_id(str(ckpt)) == first
    shutil.copytree(ckpt, tmp_path / "b" / "label")
    assert checkpoint_id(tmp_path / "b" / "label") == first                        # moved or cloned: the same
    (ckpt / "loss_curve.png").write_bytes(b"another plot")
    assert checkpoint_id(ckpt) == first                                            # its training plots do not count
    (tmp_path / "b" / "label" / "adapter_model.safetensors").write_bytes(b"other weights")
    assert checkpoint_id(tmp_path / "b" / "label") != first                        # other weights: another model
    assert recorded_model_id(str(ckpt.resolve())) == first and recorded_model_id("smollm2-135m-instruct") == \
        "smollm2-135m-instruct"
    # an output whose sidecar recorded the folder's path resumes under the content id
    out = tmp_path / "p.jsonl"
    made = OutputFile(out, {"model_id": str(ckpt.resolve())})
    made.write([{"patient_id": "1"}])
    assert OutputFile(out, {"model_id": first}, resume=True).done == {"1"}
