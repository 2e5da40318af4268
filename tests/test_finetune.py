"""SFT: target masking, loss, seeded training, checkpoint save and load (weights and LoRA), `icl finetune`."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from icl_toolkit.cohort import write_cohort
from icl_toolkit.errors import ConfigError
from icl_toolkit.finetune import IGNORE, FinetuneConfig, Finetuner, build_examples, sft_prompt_config
from icl_toolkit.models import load_lm
from icl_toolkit.prompting import PromptBuilder
from icl_toolkit.testing import tiny_llama


def _decode_target(tok, ex):
    return tok.decode([t for t in ex.labels if t != IGNORE])


def test_examples_mask_the_prompt_and_keep_the_target(small_cohort, lm_tokenizer):
    patients = small_cohort[:6]
    builder = PromptBuilder(lm_tokenizer, sft_prompt_config(160))
    for target in ("label", "rationale", "stepwise"):
        for p, ex in zip(patients, build_examples(patients, lm_tokenizer, target, query_tokens=160)):
            cut = ex.labels.index(next(t for t in ex.labels if t != IGNORE))
            # the masked part is exactly the zero-shot prompt prediction renders
            assert lm_tokenizer.decode(ex.input_ids[:cut]) == builder.render(p, [])
            assert all(t == IGNORE for t in ex.labels[:cut]) and ex.labels[cut:] == ex.input_ids[cut:]
            answer = f"ADRD within 5 years: {'Yes' if p.label else 'No'}<|im_end|>"
            text = _decode_target(lm_tokenizer, ex)
            assert text.endswith(answer)
            if target == "label":
                assert text == answer
            else:
                field = "free_text" if target == "rationale" else "stepwise"
                assert text == getattr(p.rationales, field).strip() + "\n" + answer


def test_missing_rationale_or_label_is_named(small_cohort, lm_tokenizer):
    p = dataclasses.replace(small_cohort[0], rationales=None)
    with pytest.raises(ConfigError, match=f"{p.patient_id} has no free_text rationale.*--target label"):
        build_examples([p], lm_tokenizer, "rationale", where="train.jsonl")
    build_examples([p], lm_tokenizer, "label")  # the label target needs no rationale
    q = dataclasses.replace(small_cohort[1], label=None)
    with pytest.raises(ConfigError, match="no label"):
        build_examples([q], lm_tokenizer, "label")


def test_prompt_tokens_carry_no_loss(small_cohort, lm_tokenizer):
    """The target-only loss (output layer applied at target positions only) equals transformers' own
    causal-LM loss over the full logits with the prompt labelled -100."""
    model, tok = tiny_llama(1)
    examples = build_examples(small_cohort[:3], tok, "rationale", query_tokens=120)
    loss, n = Finetuner.loss(model, examples, tok.pad_token_id)
    assert n == sum(e.n_target for e in examples)
    ids, mask, labels = Finetuner._batch(examples, tok.pad_token_id, "cpu")
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert n < sum(len(e.input_ids) for e in examples) / 2  # the prompts are most of the tokens


def _fit(small_cohort, out, **kw):
    model, tok = tiny_llama(0)
    cfg = dict(target="label", epochs=3, batch_size=4, lr=3e-3, query_tokens=120, eval_points=2) | kw
    return Finetuner(FinetuneConfig(**cfg), base="tiny", model=model, tokenizer=tok, progress=False).fit(
        small_cohort[:32], out, val=small_cohort[40:52], overwrite=True), model


def test_finetuning_lowers_the_loss_and_the_checkpoint_loads(small_cohort, tmp_path):
    result, model = _fit(small_cohort, tmp_path / "ckpt")
    m = result.meta
    assert m["steps"] == 24 and m["n_train"] == 32 and m["target"] == "label" and not m["lora"]
    assert m["final_val_loss"] < 0.5 * m["initial_val_loss"]
    assert m["final_train_loss"] < 0.5 * m["first_train_loss"]
    assert m["train_hash"].startswith("sha256:") and m["trainable_parameters"] > 0
    with open(result.folder / "loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 + 24 and sum(1 for r in rows if r["val_loss"]) == 1 + 2 + 1
    assert (result.folder / "loss_curve.png").stat().st_size > 5000
    assert json.loads((result.folder / "icl-checkpoint.json").read_text())["steps"] == 24
    loaded, tok = load_lm(str(result.folder))
    ids = torch.tensor([tok("Patient record: hypertension").input_ids])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)
    # seeded: the same run gives the same losses
    again, _ = _fit(small_cohort, tmp_path / "ckpt2")
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in result.history]


def test_top_layers_only_leaves_the_rest_untouched(small_cohort, tmp_path):
    before, _ = tiny_llama(0)
    result, model = _fit(small_cohort, tmp_path / "top", train_layers=1, epochs=1)
    assert result.meta["config"]["train_layers"] == 1
    for (name, p0), p1 in zip(before.named_parameters(), model.parameters()):
        changed = not torch.equal(p0, p1)
        assert changed == ("layers.1." in name or name == "model.norm.weight"), name


def test_lora_adapter_saves_and_loads_on_its_base(small_cohort, tiny_model_dir, tmp_path):
    cfg = FinetuneConfig(target="label", epochs=2, batch_size=4, lr=1e-2, lora=True, lora_r=4, query_tokens=120)
    tuner = Finetuner(cfg, base=str(tiny_model_dir), progress=False)
    result = tuner.fit(small_cohort[:16], tmp_path / "lora", val=small_cohort[40:48])
    assert (result.folder / "adapter_config.json").exists() and not (result.folder / "model.safetensors").exists()
    assert result.meta["lora"] and result.meta["final_val_loss"] < result.meta["initial_val_loss"]
    merged, tok = load_lm(str(result.folder))
    base, _ = load_lm(str(tiny_model_dir))
    ids = torch.tensor([tok("Patient record: hypertension").input_ids])
    with torch.no_grad():
        expect = tuner.model.eval()(ids).logits
        assert torch.allclose(merged(ids).logits, expect, atol=1e-4)
        assert not torch.allclose(base(ids).logits, expect, atol=1e-4)


def test_icl_finetune_cli(small_cohort, tiny_model_dir, tmp_path, invoke):
    write_cohort(small_cohort[:24], tmp_path / "train.jsonl")
    write_cohort(small_cohort[40:48], tmp_path / "val.jsonl")
    args = ["finetune", "--train", tmp_path / "train.jsonl", "--val", tmp_path / "val.jsonl", "--base",
            tiny_model_dir, "--out", tmp_path / "ckpt", "--target", "stepwise", "--max-steps", "2",
            "--batch-size", "4", "--query-tokens", "120", "--no-progress"]
    code, text = invoke(args)
    assert code == 0, text
    assert "stepwise SFT" in text and "2 steps" in text and "validation loss" in text
    meta = json.loads((tmp_path / "ckpt" / "icl-checkpoint.json").read_text())
    assert meta["target"] == "stepwise" and meta["base"] == str(tiny_model_dir) and meta["steps"] == 2
    # the checkpoint predicts both ways; in reason mode it gets the prompt it was trained on
    for mode, template in (("reason", "zero_shot"), ("score", "zero_shot")):
        preds = tmp_path / f"{mode}.jsonl"
        code, text = invoke(["predict", "--cohort", tmp_path / "val.jsonl", "--model", tmp_path / "ckpt", "--demos",
                             "none", "--mode", mode, "--limit", "2", "--out", preds])
        assert code == 0, text
        records = [json.loads(x) for x in preds.read_text().splitlines()]
        assert [r["template"] for r in records] == [template] * 2
        assert (records[0]["reasoning"] is not None) == (mode == "reason")
    code, text = invoke(args)
    assert code == 1 and "already exists" in text and "--overwrite" in text
    code, text = invoke(args[:-1] + ["--lr", "-1", "--no-progress"])
    assert code == 1 and "--lr" in text
