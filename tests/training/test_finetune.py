"""SFT through TRL: target masking and loss, seeded training, resume, early stopping, checkpoint save and load
(weights and LoRA), `icl finetune` and its accelerate launch."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from trl import SFTTrainer

from icl_toolkit.backends.testing import tiny_llama
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.models import load_lm
from icl_toolkit.data.cohort import write_cohort
from icl_toolkit.prompting.builder import PromptBuilder
from icl_toolkit.training.config import FinetuneConfig
from icl_toolkit.training.sft import IGNORE, Finetuner, build_examples, sft_prompt_config


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


def test_trl_completion_only_loss_equals_the_masked_loss(small_cohort, tmp_path):
    """TRL's batches carry exactly our masks (prompt tokens -100), and its completion-only loss (fused output
    layer at target positions only) equals transformers' causal-LM loss over the full logits, on the same batch."""
    model, tok = tiny_llama(1)
    examples = build_examples(small_cohort[:3], tok, "rationale", query_tokens=120)
    tuner = Finetuner(FinetuneConfig(target="rationale", max_steps=1, batch_size=3, query_tokens=120),
                      base="tiny", model=model, tokenizer=tok, progress=False)
    trainable, causal, _ = tuner._prepare()
    trainer = tuner._trainer(trainable, causal, tok, examples, [], [], tmp_path / "work", 1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for row, ex in zip(batch["labels"].tolist(), examples):
        assert row[:len(ex.labels)] == ex.labels and set(row[len(ex.labels):]) <= {IGNORE}
    n_target = sum(e.n_target for e in examples)
    assert int((batch["labels"] != IGNORE).sum()) == n_target < sum(len(e.input_ids) for e in examples) / 2
    model.eval()
    assert trainer.target_positions_only  # on the CPU: the output layer at target positions only
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        trl_own = SFTTrainer.compute_loss(trainer, model, dict(batch))  # TRL's fused loss over every position
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    assert trl_own.item() == pytest.approx(reference.item(), abs=1e-5)


def _fit(small_cohort, out, callbacks=(), resume=False, overwrite=None, **kw):
    model, tok = tiny_llama(0)
    cfg = dict(target="label", epochs=3, batch_size=4, lr=3e-3, query_tokens=120, eval_points=2, stop_on="loss",
               dtype="float32") | kw
    return Finetuner(FinetuneConfig(**cfg), base="tiny", model=model, tokenizer=tok, progress=False,
                     callbacks=callbacks).fit(small_cohort[:32], out, val=small_cohort[40:52],
                                              overwrite=not resume if overwrite is None else overwrite,
                                              resume=resume), model


def test_finetuning_lowers_the_loss_and_the_checkpoint_loads(small_cohort, tmp_path):
    result, model = _fit(small_cohort, tmp_path / "ckpt")
    m = result.meta
    assert m["steps"] == 24 and m["n_train"] == 32 and m["target"] == "label" and not m["lora"]
    assert m["trainer"].startswith("trl ") and not m["stopped_early"] and m["scheduled_steps"] == 24
    assert m["final_val_loss"] < 0.5 * m["initial_val_loss"]
    assert m["final_train_loss"] < 0.5 * m["first_train_loss"]
    assert m["train_hash"].startswith("sha256:") and m["trainable_parameters"] > 0
    assert set(m["val_auroc_by_step"]) == {"0", "8", "16", "24"}  # the AUROC at every evaluation
    assert all(0 <= v <= 1 for v in m["val_auroc_by_step"].values())
    with open(result.folder / "loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 + 24 and sum(1 for r in rows if r["val_loss"]) == 1 + 2 + 1
    assert [r["step"] for r in rows if r["val_auroc"]] == ["0", "8", "16", "24"]
    assert (result.folder / "loss_curve.png").stat().st_size > 5000
    assert json.loads((result.folder / "icl-checkpoint.json").read_text())["steps"] == 24
    assert not (tmp_path / ".ckpt.partial").exists()  # the trainer's working folder is gone once done
    loaded, tok = load_lm(str(result.folder), dtype="float32")
    ids = torch.tensor([tok("Patient record: hypertension").input_ids])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)
    # seeded: the same run gives the same losses
    again, _ = _fit(small_cohort, tmp_path / "ckpt2")
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in result.history]


class _Interrupt(Exception):
    pass


def test_resume_from_a_trainer_checkpoint_reaches_the_same_weights(small_cohort, tmp_path):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise _Interrupt  # a killed process: the last save was at step 4

    kw = dict(max_steps=8, eval_steps=2)
    whole, whole_model = _fit(small_cohort, tmp_path / "whole", **kw)
    with pytest.raises(_Interrupt):
        _fit(small_cohort, tmp_path / "cut", callbacks=[StopAt()], **kw)
    assert (tmp_path / ".cut.partial" / "trainer" / "checkpoint-4").is_dir() and not (tmp_path / "cut").exists()
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):  # never silently thrown away
        _fit(small_cohort, tmp_path / "cut", overwrite=False, **kw)
    with pytest.raises(ConfigError, match="settings"):  # nor continued with other settings
        _fit(small_cohort, tmp_path / "cut", resume=True, **kw | {"lr": 1e-3})
    resumed, resumed_model = _fit(small_cohort, tmp_path / "cut", resume=True, **kw)
    assert resumed.meta["resumed_from"] == "checkpoint-4" and resumed.meta["steps"] == 8
    for (name, a), b in zip(whole_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in whole.history])


def test_early_stopping_fires_on_a_plateau(small_cohort, tmp_path):
    # a learning rate too small to move the validation loss: no evaluation improves on the first by 0.01
    result, _ = _fit(small_cohort, tmp_path / "flat", lr=1e-9, max_steps=40, eval_steps=2, patience=2, min_delta=0.01)
    m = result.meta
    assert m["stopped_early"] and m["steps"] == 6 and m["scheduled_steps"] == 40
    evals = {r["step"]: r["val_loss"] for r in result.history if r["val_loss"] is not None and r["step"] > 0}
    assert m["best_step"] == min(evals, key=evals.get)  # the weights kept are the best evaluation's


def test_early_stopping_waits_for_min_epochs(small_cohort, tmp_path):
    # the same plateau (it stops at step 6 above), but judged only from epoch 2 on (step 16 of 8-step epochs): the
    # evaluations at 16 and 18 are the two without improvement
    result, _ = _fit(small_cohort, tmp_path / "flat", lr=1e-9, max_steps=40, eval_steps=2, patience=2, min_delta=0.01,
                     min_epochs=2)
    m = result.meta
    assert m["stopped_early"] and m["steps"] == 18 and m["config"]["min_epochs"] == 2


def test_top_layers_only_leaves_the_rest_untouched(small_cohort, tmp_path):
    before, _ = tiny_llama(0)
    result, model = _fit(small_cohort, tmp_path / "top", train_layers=1, epochs=1)
    assert result.meta["config"]["train_layers"] == 1
    for (name, p0), p1 in zip(before.named_parameters(), model.parameters()):
        changed = not torch.equal(p0, p1)
        assert changed == ("layers.1." in name or name == "model.norm.weight"), name


def test_bf16_training_runs_and_records_its_dtype(small_cohort, tmp_path):
    result, _ = _fit(small_cohort, tmp_path / "bf16", dtype="bfloat16", max_steps=4, eval_steps=2)
    assert result.meta["config"]["dtype"] == "bfloat16"
    assert result.meta["final_val_loss"] < result.meta["initial_val_loss"]


def test_lora_adapter_saves_and_loads_on_its_base(small_cohort, tiny_model_dir, tmp_path):
    cfg = FinetuneConfig(target="label", epochs=2, batch_size=4, lr=1e-2, lora=True, lora_r=4, query_tokens=120,
                         stop_on="loss", dtype="float32")
    tuner = Finetuner(cfg, base=str(tiny_model_dir), progress=False)
    result = tuner.fit(small_cohort[:16], tmp_path / "lora", val=small_cohort[40:48])
    assert (result.folder / "adapter_config.json").exists() and not (result.folder / "model.safetensors").exists()
    assert not (result.folder / "tokenizer.json").exists()  # small enough to commit: the base's tokenizer is used
    from icl_toolkit.core.models import load_tokenizer

    assert load_tokenizer(str(result.folder)).get_vocab() == load_tokenizer(str(tiny_model_dir)).get_vocab()
    assert result.meta["lora"] and result.meta["final_val_loss"] < result.meta["initial_val_loss"]
    merged, tok = load_lm(str(result.folder), dtype="float32")
    base, _ = load_lm(str(tiny_model_dir), dtype="float32")
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


def test_accelerate_launch_runs_icl_finetune(small_cohort, tiny_model_dir, tmp_path):
    """The documented multi-GPU command, as one CPU process: accelerate's launcher runs `icl finetune`."""
    import shutil
    import subprocess
    import sys

    write_cohort(small_cohort[:12], tmp_path / "train.jsonl")
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert launcher, "accelerate's launcher is installed with the package"
    r = subprocess.run([launcher, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--cpu", "-m", "icl_toolkit.cli", "finetune", "--train",
                        str(tmp_path / "train.jsonl"), "--base", str(tiny_model_dir), "--out", str(tmp_path / "ckpt"),
                        "--max-steps", "2", "--batch-size", "4", "--query-tokens", "120", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    meta = json.loads((tmp_path / "ckpt" / "icl-checkpoint.json").read_text())
    assert meta["steps"] == 2 and meta["trainer"].startswith("trl ")
