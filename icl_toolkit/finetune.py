"""Supervised fine-tuning (SFT) of a causal language model on the zero-shot prompt.

The input of every training example is the zero-shot prompt exactly as
prediction renders it (system message, patient record, question, chat template,
up to the start of the assistant's turn). The target is what the assistant should
write next:

``label``
    ``"ADRD within 5 years: Yes"`` (or ``No``), then end of turn;
``rationale``
    the patient's free-form rationale, a newline, then the same answer line;
``stepwise``
    the step-by-step rationale, a newline, then the same answer line.

Loss is computed on the target tokens only: prompt tokens carry label ``-100``
and, to save time on CPU, the output layer is applied only at target positions.
The answer line is the same words that end every demonstration and open the
answer slot at prediction time, so a checkpoint is scored the same way as the
base model: in ``score`` mode P(yes) is read right after the answer prefix; in
``reason`` mode the model first writes (its learned rationale), generation stops
at the answer prefix, and the slot after it is scored.

Training is a plain, seeded PyTorch loop (AdamW, linear warm-up and decay,
gradient clipping, length-padded batches in a seeded random order). The
input embedding matrix (tied to the output layer in SmolLM2) is kept frozen;
``train_layers`` restricts training to the top N transformer blocks, and
``lora`` trains low-rank adapters through peft instead of the weights. The
checkpoint folder holds the weights (or the adapter), the tokenizer,
``icl-checkpoint.json`` (target, base model, training-data hash, steps, losses,
settings), ``loss.csv`` and ``loss_curve.png``.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from icl_toolkit.artifacts import base_meta, content_hash, write_json_atomic
from icl_toolkit.cohort import Patient
from icl_toolkit.errors import ConfigError
from icl_toolkit.backends import encode_prompt
from icl_toolkit.models import CHECKPOINT_META, lm_id
from icl_toolkit.progress import progress_bar
from icl_toolkit.prompting import PromptBuilder, PromptConfig
from icl_toolkit.spec import PredictConfig

__all__ = ["FinetuneConfig", "SFTExample", "build_examples", "sft_prompt_config", "Finetuner", "FinetuneResult",
           "TARGETS"]

TARGETS = ("label", "rationale", "stepwise")
SFT_TEMPLATE = "zero_shot"
IGNORE = -100


class FinetuneConfig(BaseModel):
    """Settings of one SFT run (validated; unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["label", "rationale", "stepwise"] = "label"
    """What the assistant learns to write: the answer, or a rationale then the answer."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training set (fractions allowed); ``max_steps`` wins when set."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimiser steps."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate (default 5e-5 for weights, 5e-4 for LoRA adapters)."""
    batch_size: int = Field(8, ge=1)
    """Examples per optimiser step."""
    seed: int = 0
    """Seeds the example order, LoRA initialisation and dropout."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of the model weights."""
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    train_layers: int | None = Field(None, ge=1)
    """Train only the top N transformer blocks (and the final norm); default all."""
    warmup: float = Field(0.1, ge=0, lt=1)
    """Share of the steps spent warming the learning rate up."""
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    query_tokens: int = Field(256, ge=90)
    """History budget of each training prompt, in model tokens (shorter trains faster)."""
    horizon_years: float = Field(5.0, gt=0)
    val_limit: int = Field(64, ge=1)
    """Most validation patients used for the validation loss."""
    eval_points: int = Field(4, ge=0)
    """Validation-loss evaluations during training (besides before the first and after the last step)."""

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-4 if self.lora else 5e-5)


def sft_prompt_config(query_tokens: int = 256, horizon_years: float = 5.0) -> PromptConfig:
    """The prompt layout SFT trains on: zero-shot, ending at the start of the assistant's turn (the spec's
    prompt section, so it is exactly what prediction renders for the same options)."""
    return PredictConfig.from_options(k=0, mode="reason", template=SFT_TEMPLATE, query_tokens=query_tokens,
                                      horizon_years=horizon_years).prompt


@dataclass
class SFTExample:
    """One tokenised training example; ``labels`` is ``-100`` on prompt tokens."""

    patient_id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _target_text(patient: Patient, target: str, answer: str, where: str) -> str:
    if target == "label":
        return answer
    field = "free_text" if target == "rationale" else "stepwise"
    text = getattr(patient.rationales, field, None) if patient.rationales is not None else None
    if not text or not text.strip():
        raise ConfigError(f"{where}: patient {patient.patient_id} has no {field} rationale, which --target {target} "
                          "needs. Use --target label, or generate rationales first (icl rationales generate).")
    return text.strip() + "\n" + answer


def build_examples(patients: Sequence[Patient], tokenizer: Any, target: str = "label", *,
                   query_tokens: int = 256, horizon_years: float = 5.0, max_context: int = 8192,
                   where: str = "training data") -> list[SFTExample]:
    """Prompt + target token sequences with the prompt masked out of the loss.

    Raises:
        ConfigError: a patient without a label, or without the rationale the target needs.
    """
    if target not in TARGETS:
        raise ConfigError(f"The 'target' parameter must be one of {', '.join(TARGETS)}. Got {target!r} instead.")
    builder = PromptBuilder(tokenizer, sft_prompt_config(query_tokens, horizon_years), max_context)
    prefix = builder.answer_prefix
    end = tokenizer.eos_token or ""
    examples = []
    for p in patients:
        if p.label is None:
            raise ConfigError(f"{where}: patient {p.patient_id} has no label; SFT needs known outcomes.")
        answer = f"{prefix} {'Yes' if p.label == 1 else 'No'}"
        prompt = builder.render(p, [])
        ids_prompt = encode_prompt(tokenizer, prompt)
        ids = encode_prompt(tokenizer, prompt + _target_text(p, target, answer, where) + end)
        cut = 0  # the prompt's tokens are the common prefix (the prompt ends at a newline, so BPE agrees)
        while cut < min(len(ids), len(ids_prompt)) and ids[cut] == ids_prompt[cut]:
            cut += 1
        if len(ids) > max_context:
            raise ConfigError(f"{where}: the training example of patient {p.patient_id} has {len(ids)} tokens, more "
                              f"than the model's context ({max_context}). Lower --query-tokens.")
        examples.append(SFTExample(p.patient_id, ids, [IGNORE] * cut + ids[cut:]))
    return examples


@dataclass
class FinetuneResult:
    """Where the checkpoint went and what its metadata says."""

    folder: Path
    meta: dict[str, Any]
    history: list[dict[str, Any]]


class Finetuner:
    """Runs SFT of a base model on a cohort and writes a checkpoint folder.

    Args:
        config: the SFT settings.
        base: the base model (``"default"``, a checkpoint folder or a cached hub name).
        model, tokenizer: an already loaded model and tokenizer (tests); ``base`` then only names it.
        progress: show a progress bar with the running loss.
    """

    def __init__(self, config: FinetuneConfig | None = None, *, base: str = "default", model: Any = None,
                 tokenizer: Any = None, progress: bool = True) -> None:
        self.config = config or FinetuneConfig()
        self.base = base
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress

    # ------------------------------------------------------------------ model

    def _prepare(self) -> tuple[Any, Any, Any]:
        """(trainable model, causal LM under it, tokenizer) with the right parameters unfrozen."""
        import torch

        from icl_toolkit.models import load_lm

        c = self.config
        torch.manual_seed(c.seed)
        if self.model is None:
            self.model, self.tokenizer = load_lm(self.base)
        causal = self.model
        layers = causal.get_decoder().layers
        n_layers = len(layers)
        if c.train_layers is not None and c.train_layers > n_layers:
            raise ConfigError(f"The 'train_layers' parameter ({c.train_layers}) is more than the model's "
                              f"{n_layers} transformer blocks.")
        top = range(n_layers - (c.train_layers or n_layers), n_layers)
        if c.lora:
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError:
                raise ConfigError("--lora needs peft: pip install peft") from None
            lcfg = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout, task_type="CAUSAL_LM",
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"],
                              layers_to_transform=list(top) if c.train_layers else None)
            trainable = get_peft_model(causal, lcfg)
            causal = trainable.get_base_model()
        else:
            trainable = causal
            for param in causal.parameters():
                param.requires_grad_(c.train_layers is None)
            for i in top:
                for param in layers[i].parameters():
                    param.requires_grad_(True)
            norm = getattr(causal.get_decoder(), "norm", None)
            if norm is not None:
                for param in norm.parameters():
                    param.requires_grad_(True)
            causal.get_input_embeddings().weight.requires_grad_(False)
        return trainable, causal, self.tokenizer

    # ------------------------------------------------------------------ loss

    @staticmethod
    def _batch(examples: Sequence[SFTExample], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
        import torch

        width = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for r, e in enumerate(examples):
            n = len(e.input_ids)
            ids[r, :n] = torch.tensor(e.input_ids)
            labels[r, :n] = torch.tensor(e.labels)
            mask[r, :n] = 1
        return ids.to(device), mask.to(device), labels.to(device)

    @staticmethod
    def loss(causal: Any, examples: Sequence[SFTExample], pad_id: int) -> tuple[Any, int]:
        """Mean cross-entropy over the target tokens of ``examples`` and their count.

        The output layer is applied only at positions that predict a target token.
        """
        import torch.nn.functional as F

        device = next(causal.parameters()).device
        ids, mask, labels = Finetuner._batch(examples, pad_id, device)
        hidden = causal.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        nxt = labels[:, 1:]
        sel = nxt != IGNORE
        logits = causal.get_output_embeddings()(hidden[:, :-1][sel]).float()
        return F.cross_entropy(logits, nxt[sel]), int(sel.sum())

    def _val_loss(self, causal: Any, examples: Sequence[SFTExample], pad_id: int) -> float:
        import torch

        was = causal.training
        causal.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(examples), self.config.batch_size):
                loss, n = self.loss(causal, examples[start:start + self.config.batch_size], pad_id)
                total += float(loss) * n
                count += n
        causal.train(was)
        return total / max(count, 1)

    # ------------------------------------------------------------------ run

    def fit(self, train: Sequence[Patient], out: str | Path, *, val: Sequence[Patient] | None = None,
            overwrite: bool = False, train_name: str = "train", val_name: str = "val") -> FinetuneResult:
        """Train on ``train`` and write the checkpoint folder ``out``.

        The folder is written next to ``out`` under a temporary name and moved
        into place only when complete, so an interrupted run leaves no half checkpoint.

        Raises:
            ConfigError: ``out`` exists (without ``overwrite``), bad data for the target.
        """
        import torch
        from transformers import get_linear_schedule_with_warmup

        c = self.config
        out = Path(out)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise ConfigError(f"{out} already exists and is not empty. Pass --overwrite to replace it, or choose "
                              "another --out.")
        train = list(train)
        if not train:
            raise ConfigError(f"{train_name}: no training patients.")
        start_time = time.perf_counter()
        trainable, causal, tok = self._prepare()
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        max_context = int(getattr(causal.config, "max_position_embeddings", 0) or 8192)
        kw = dict(query_tokens=c.query_tokens, horizon_years=c.horizon_years, max_context=max_context)
        examples = build_examples(train, tok, c.target, where=train_name, **kw)
        val_examples = build_examples(list(val)[:c.val_limit], tok, c.target, where=val_name, **kw) if val else []

        steps_per_epoch = math.ceil(len(examples) / c.batch_size)
        total = c.max_steps or max(1, math.ceil(c.epochs * steps_per_epoch))
        params = [p for p in trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(c.warmup * total), total)
        eval_at = {round(total * (i + 1) / (c.eval_points + 1)) for i in range(c.eval_points)} if val_examples else set()
        rng = np.random.default_rng(c.seed)
        history: list[dict[str, Any]] = []
        initial_val = self._val_loss(causal, val_examples, pad_id) if val_examples else None
        if initial_val is not None:
            history.append({"step": 0, "epoch": 0.0, "train_loss": None, "lr": 0.0, "val_loss": initial_val})
        trainable.train()
        step, ema = 0, None
        with progress_bar(f"fine-tuning ({c.target})", total, self.progress) as advance:
            while step < total:
                order = rng.permutation(len(examples))
                for b in range(0, len(order), c.batch_size):
                    if step >= total:
                        break
                    batch = [examples[i] for i in order[b:b + c.batch_size]]
                    loss, _ = self.loss(causal, batch, pad_id)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    value = loss.detach().item()
                    ema = value if ema is None else 0.9 * ema + 0.1 * value
                    row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "train_loss": value,
                           "lr": schedule.get_last_lr()[0], "val_loss": None}
                    if step in eval_at or (step == total and val_examples):
                        row["val_loss"] = self._val_loss(causal, val_examples, pad_id)
                    history.append(row)
                    advance(1, f"loss {ema:.3f}")
        trainable.eval()
        train_losses = [r["train_loss"] for r in history if r["train_loss"] is not None]
        tail = train_losses[-max(1, len(train_losses) // 10):]
        meta = base_meta("checkpoint") | {
            "target": c.target,
            "base": self.base,
            "base_id": lm_id(self.base),
            "lora": c.lora,
            "config": c.model_dump() | {"lr": c.learning_rate},
            "prompt": {"template": SFT_TEMPLATE, "query_tokens": c.query_tokens, "horizon_years": c.horizon_years},
            "train_hash": content_hash(train),
            "train_file": train_name,
            "n_train": len(examples),
            "n_train_target_tokens": int(sum(e.n_target for e in examples)),
            "val_hash": content_hash(list(val)[:c.val_limit]) if val else None,
            "n_val": len(val_examples),
            "steps": step,
            "epochs_done": round(step / steps_per_epoch, 4),
            "trainable_parameters": int(sum(p.numel() for p in params)),
            "initial_val_loss": initial_val,
            "final_val_loss": history[-1]["val_loss"] if val_examples else None,
            "final_train_loss": float(np.mean(tail)),
            "first_train_loss": train_losses[0],
            "seconds": round(time.perf_counter() - start_time, 1),
        }
        folder = self._save(trainable, tok, out, meta, history)
        return FinetuneResult(folder, meta, history)

    def _save(self, trainable: Any, tok: Any, out: Path, meta: dict[str, Any],
              history: list[dict[str, Any]]) -> Path:
        tmp = out.with_name(f".{out.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        trainable.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        write_json_atomic(tmp / CHECKPOINT_META, meta)
        _write_history(tmp, history, meta)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return out


def _write_history(folder: Path, history: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    import csv

    with open(folder / "loss.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "epoch", "train_loss", "lr", "val_loss"])
        writer.writeheader()
        writer.writerows(history)
    plot_loss_curve(history, folder / "loss_curve.png",
                    title=f"SFT ({meta['target']} target) of {meta['base_id']}: {meta['n_train']} patients, "
                          f"{meta['steps']} steps")


def plot_loss_curve(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Training loss per step (with a running mean) and validation loss points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history if r["train_loss"] is not None]
    losses = [r["train_loss"] for r in history if r["train_loss"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        ax.plot(steps, losses, color="tab:blue", alpha=0.35, label="train (per step)")
        window = max(1, len(losses) // 10)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", label=f"train (mean of {window})")
    val = [(r["step"], r["val_loss"]) for r in history if r["val_loss"] is not None]
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="validation")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy on target tokens")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

