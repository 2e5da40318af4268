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

Training runs on TRL's ``SFTTrainer`` (so on one CPU, one GPU, or several GPUs
and machines through ``accelerate launch``). The examples are tokenised
prompt-completion pairs: ``input_ids`` with a ``completion_mask`` marking the
target, tokenised exactly as prediction tokenises the prompt, and TRL's
completion-only loss gives prompt tokens label ``-100``. On the CPU the loss
applies the output layer only at positions that predict a target token (TRL's
fused output layer does so only on Triton devices): a documented override of
``compute_loss`` in :class:`ICLTrainer`, not a second loop.

Around the trainer this module keeps what users rely on: the input embedding
matrix (tied to the output layer in SmolLM2) stays frozen; ``train_layers``
trains only the top N transformer blocks; ``lora`` trains peft adapters instead;
``dtype`` ``auto`` trains with bf16 autocast (fp32 master weights) on a CPU or
GPU with native bf16. With a validation cohort the trainer evaluates every
``eval_steps`` steps: the validation loss (TRL) and the validation AUROC of the
direct readout (P(yes) after the answer prefix of the zero-shot prompt, what
``--mode score`` reads), and ``patience`` stops training when the chosen metric
has not improved for that many evaluations; the best evaluation's weights are
the checkpoint. The trainer's own checkpoints live in ``.<out>.partial/trainer``
beside the output folder, so ``resume`` continues an interrupted run from its
last save (same settings and data, checked) and reaches the same weights as an
uninterrupted run. The checkpoint folder holds the weights (or the adapter),
the tokenizer, ``icl-checkpoint.json`` (target, base model, training-data hash,
steps, losses, validation history, settings), ``loss.csv`` and ``loss_curve.png``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import numpy as np
from datasets import Dataset
from datasets.utils.logging import disable_progress_bar
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_callback import ProgressCallback as TQDMProgressCallback
from trl import SFTConfig, SFTTrainer

from icl_toolkit.backends import encode_prompt
from icl_toolkit.core.artifacts import ArtifactMismatch, base_meta, check_meta, write_json_atomic
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.models import CHECKPOINT_META, lm_id
from icl_toolkit.core.progress import progress_bar
from icl_toolkit.data.cohort import Patient, content_hash
from icl_toolkit.data.task import ADRD, Task
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.prompting.builder import PromptBuilder
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.training.config import TARGETS, FinetuneConfig

__all__ = [
    "finetune",
    "SFTExample",
    "build_examples",
    "sft_prompt_config",
    "Finetuner",
    "FinetuneResult",
    "ICLTrainer",
    "plot_loss_curve",
]

SFT_TEMPLATE = "zero_shot"
_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in SFTConfig.__dataclass_fields__
    else "gradient_checkpointing"
)
"""The trainer's name for recomputing activations: ``activation_checkpointing`` since transformers 5.2x,
``gradient_checkpointing`` before (the vLLM CPU build pins transformers 5.19)."""
IGNORE = -100


def sft_prompt_config(query_tokens: int = 256, horizon_years: float = 5.0, task: Task = ADRD) -> PromptConfig:
    """The prompt layout SFT trains on: zero-shot for ``task``, ending at the start of the assistant's turn (the
    spec's prompt section, so it is exactly what prediction renders for the same options)."""
    return PredictConfig.from_options(
        k=0, mode="reason", template=SFT_TEMPLATE, query_tokens=query_tokens, horizon_years=horizon_years, task=task
    ).prompt


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
        raise ConfigError(
            f"{where}: patient {patient.patient_id} has no {field} rationale, which --target {target} "
            "needs. Use --target label, or generate rationales first (icl rationales generate)."
        )
    return text.strip() + "\n" + answer


def build_examples(
    patients: Sequence[Patient],
    tokenizer: Any,
    target: str = "label",
    *,
    query_tokens: int = 256,
    horizon_years: float = 5.0,
    max_context: int = 8192,
    where: str = "training data",
    task: Task = ADRD,
) -> list[SFTExample]:
    """Prompt + target token sequences with the prompt masked out of the loss.

    Raises:
        ConfigError: a patient without a label, or without the rationale the target needs.
    """
    if target not in TARGETS:
        raise ConfigError(f"The 'target' parameter must be one of {', '.join(TARGETS)}. Got {target!r} instead.")
    builder = PromptBuilder(tokenizer, sft_prompt_config(query_tokens, horizon_years, task), max_context)
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
            raise ConfigError(
                f"{where}: the training example of patient {p.patient_id} has {len(ids)} tokens, more "
                f"than the model's context ({max_context}). Lower --query-tokens."
            )
        examples.append(SFTExample(p.patient_id, ids, [IGNORE] * cut + ids[cut:]))
    return examples


@dataclass
class FinetuneResult:
    """Where the checkpoint went and what its metadata says."""

    folder: Path
    meta: dict[str, Any]
    history: list[dict[str, Any]]


HISTORY_FIELDS = ["step", "epoch", "train_loss", "lr", "val_loss", "val_auroc"]


class Finetuner:
    """Runs SFT of a base model on a cohort through TRL's ``SFTTrainer`` and writes a checkpoint folder.

    Args:
        config: the SFT settings.
        base: the base model (``"default"``, a checkpoint folder or a cached hub name).
        model, tokenizer: an already loaded model and tokenizer (tests); ``base`` then only names it.
        progress: show a progress bar with the running loss.
        callbacks: extra ``transformers.TrainerCallback`` objects (tests use one to interrupt a run).
    """

    def __init__(
        self,
        config: FinetuneConfig | None = None,
        *,
        base: str = "default",
        model: Any = None,
        tokenizer: Any = None,
        progress: bool = True,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.config = config or FinetuneConfig()
        self.base = base
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress
        self.callbacks = list(callbacks)

    # ------------------------------------------------------------------ model

    def _prepare(self) -> tuple[Any, Any, Any]:
        """(trainable model, causal LM under it, tokenizer) with the right parameters unfrozen."""
        import torch

        from icl_toolkit.core.models import check_device, load_lm

        c = self.config
        torch.manual_seed(c.seed)
        check_device(c.device)
        if self.model is None:
            # fp32 weights (bf16 training computes under autocast and updates fp32 masters), loaded on the CPU:
            # the trainer moves the model to its device (each process's own GPU under accelerate launch)
            self.model, self.tokenizer = load_lm(self.base, device="cpu", dtype="float32")
        causal = self.model
        layers = causal.get_decoder().layers
        n_layers = len(layers)
        if c.train_layers is not None and c.train_layers > n_layers:
            raise ConfigError(
                f"The 'train_layers' parameter ({c.train_layers}) is more than the model's "
                f"{n_layers} transformer blocks."
            )
        top = range(n_layers - (c.train_layers or n_layers), n_layers)
        if c.lora:
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError:
                raise ConfigError("--lora needs peft: pip install peft") from None
            lcfg = LoraConfig(
                r=c.lora_r,
                lora_alpha=c.alpha,
                lora_dropout=c.lora_dropout,
                task_type="CAUSAL_LM",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                layers_to_transform=list(top) if c.train_layers else None,
            )
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

    # ------------------------------------------------------------------ run

    def fit(
        self,
        train: Sequence[Patient],
        out: str | Path,
        *,
        val: Sequence[Patient] | None = None,
        overwrite: bool = False,
        resume: bool = False,
        train_name: str = "train",
        val_name: str = "val",
    ) -> FinetuneResult:
        """Train on ``train`` and write the checkpoint folder ``out``.

        The trainer works in ``.<out>.partial/`` beside ``out``; the folder is moved into place only when
        complete, so an interrupted run leaves no half checkpoint, and ``resume`` continues it from the
        trainer's last save.

        Raises:
            ConfigError: ``out`` exists (without ``overwrite``), an interrupted run exists (without ``resume``
                or ``overwrite``) or was made with other settings or data, bad data for the target.
        """
        c = self.config
        out = Path(out)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise ConfigError(
                f"{out} already exists and is not empty. Pass --overwrite to replace it, or choose another --out."
            )
        train = list(train)
        if not train:
            raise ConfigError(f"{train_name}: no training patients.")
        val_patients = list(val)[: c.val_limit] if val else []
        start_time = time.perf_counter()
        work = out.with_name(f".{out.name}.partial")
        run_id = {
            "target": c.target,
            "base_id": lm_id(self.base),
            "settings": c.run_settings(),
            "train_hash": content_hash(train),
            "val_hash": content_hash(val_patients) if val_patients else None,
        }
        checkpoint = self._resume_point(work, run_id, resume=resume, overwrite=overwrite, out=out)
        trainable, causal, tok = self._prepare()
        max_context = int(getattr(causal.config, "max_position_embeddings", 0) or 8192)
        kw: dict[str, Any] = dict(
            query_tokens=c.query_tokens, horizon_years=c.horizon_years, max_context=max_context, task=c.task
        )
        examples = build_examples(train, tok, c.target, where=train_name, **kw)
        val_examples = build_examples(val_patients, tok, c.target, where=val_name, **kw) if val_patients else []
        steps_per_epoch = math.ceil(len(examples) / (c.batch_size * c.gradient_accumulation))
        total = c.max_steps or max(1, math.ceil(c.epochs * steps_per_epoch))
        trainer = self._trainer(
            trainable, causal, tok, examples, val_examples, val_patients, work, total, fresh=checkpoint is None
        )
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        trainable.eval()
        history = _history(trainer.state.log_history)
        params = [p for p in trainable.parameters() if p.requires_grad]
        meta = self._meta(
            run_id, train_name, examples, val_examples, trainer, history, params, steps_per_epoch, total
        ) | {
            "seconds": round(time.perf_counter() - start_time, 1),
            "resumed_from": checkpoint.name if checkpoint else None,
        }
        self._save(trainable, tok, out, meta, history)
        shutil.rmtree(work, ignore_errors=True)
        return FinetuneResult(out, meta, history)

    # ------------------------------------------------------------------ pieces of fit

    @staticmethod
    def _resume_point(work: Path, run_id: dict[str, Any], *, resume: bool, overwrite: bool, out: Path) -> Path | None:
        """The trainer checkpoint to resume from (``None``: start fresh), after checking the interrupted run."""
        record = work / "run.json"
        # a save cut off mid-write (no trainer_state.json, written last) is not one to resume from
        saves = sorted(
            (d for d in work.glob("trainer/checkpoint-*") if (d / "trainer_state.json").is_file()),
            key=lambda d: int(d.name.rpartition("-")[2]),
        )
        if work.exists() and (overwrite or not resume):
            if saves and not overwrite:
                raise ConfigError(
                    f"An interrupted fine-tuning run of {out} is in {work} (last save: "
                    f"{saves[-1].name}). Pass --resume to continue it, or --overwrite to start over."
                )
            shutil.rmtree(work)
            saves = []
        if saves:
            try:
                meta = json.loads(record.read_text())
            except (OSError, ValueError) as exc:
                raise ArtifactMismatch(
                    f"{record}: unreadable record of the interrupted run ({exc}). Pass --overwrite to start over."
                ) from None
            check_meta(
                meta,
                run_id,
                what="interrupted fine-tuning run",
                where=str(record),
                fix="Resume with the same settings and data, or pass --overwrite to start over.",
            )
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, run_id)
        return saves[-1] if saves else None

    def _trainer(
        self,
        trainable: Any,
        causal: Any,
        tok: Any,
        examples: list[SFTExample],
        val_examples: list[SFTExample],
        val_patients: list[Patient],
        work: Path,
        total: int,
        *,
        fresh: bool = True,
    ) -> ICLTrainer:
        from icl_toolkit.core.hardware import resolve_dtype

        c = self.config
        bf16 = resolve_dtype(c.dtype, c.device) == "bfloat16"
        disable_progress_bar()  # datasets' per-map bars; the training bar below is the one to watch
        # without validation patients there is nothing to evaluate, but the trainer still saves 4 times (resume)
        points = c.eval_points if val_examples else 4
        every = c.eval_steps or max(1, math.ceil(total / (points + 1)))
        metric = {"auroc": "eval_auroc", "loss": "eval_loss"}[c.stop_on]
        args = SFTConfig(
            output_dir=str(work / "trainer"),
            seed=c.seed,
            data_seed=c.seed,
            max_steps=total,
            per_device_train_batch_size=c.batch_size,
            per_device_eval_batch_size=c.batch_size,
            gradient_accumulation_steps=c.gradient_accumulation,
            learning_rate=c.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=math.ceil(c.warmup * total),
            weight_decay=c.weight_decay,
            max_grad_norm=c.max_grad_norm,
            optim="adamw_torch",
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            bf16=bf16,
            **cast(dict[str, Any], {_CHECKPOINTING: c.gradient_checkpointing}),
            completion_only_loss=True,
            max_length=None,
            logging_steps=1,
            eval_strategy="steps" if val_examples else "no",
            eval_steps=every,
            eval_on_start=bool(val_examples) and fresh,  # the step-0 point of the validation curves
            save_strategy="steps",
            save_steps=every,
            save_total_limit=2,
            load_best_model_at_end=bool(val_examples),
            metric_for_best_model=metric if val_examples else None,
            greater_is_better=c.stop_on == "auroc",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=c.device == "cpu",
            remove_unused_columns=True,
        )
        callbacks = list(self.callbacks)
        if val_examples and c.patience:
            per_epoch = math.ceil(len(examples) / (c.batch_size * c.gradient_accumulation))
            stopper = EarlyStoppingCallback(c.patience, c.min_delta)
            callbacks += [stopper, _NotBefore(stopper, math.ceil(c.min_epochs * per_epoch))]
        trainer = ICLTrainer(
            model=trainable,
            args=args,
            processing_class=tok,
            train_dataset=_dataset(examples),
            eval_dataset=_dataset(val_examples) if val_examples else None,
            callbacks=callbacks,
        )
        trainer.val_auroc = _ValAUROC(causal, tok, val_patients, c) if val_patients else None
        trainer.target_positions_only = trainer.args.device.type == "cpu" and trainer.accelerator.num_processes == 1
        for cls in (PrinterCallback, TQDMProgressCallback):
            trainer.remove_callback(cls)
        trainer.add_callback(ProgressCallback(f"fine-tuning ({c.target})", total, self.progress))
        return trainer

    def _meta(
        self,
        run_id: dict[str, Any],
        train_name: str,
        examples: list[SFTExample],
        val_examples: list[SFTExample],
        trainer: Any,
        history: list[dict[str, Any]],
        params: list[Any],
        steps_per_epoch: int,
        total: int,
    ) -> dict[str, Any]:
        c = self.config
        steps = int(trainer.state.global_step)
        train_losses = [r["train_loss"] for r in history if r["train_loss"] is not None]
        tail = train_losses[-max(1, len(train_losses) // 10) :]
        evals = [r for r in history if r["val_loss"] is not None or r["val_auroc"] is not None]
        best_step = trainer.state.best_global_step if val_examples else None
        best = next((r for r in evals if r["step"] == best_step), evals[-1] if evals else None)
        return base_meta("checkpoint") | {
            "target": c.target,
            "base": self.base,
            "base_id": run_id["base_id"],
            "lora": c.lora,
            "trainer": f"trl {version('trl')} SFTTrainer (transformers {version('transformers')})",
            "config": c.model_dump() | {"lr": c.learning_rate},
            "prompt": {
                "template": SFT_TEMPLATE,
                "query_tokens": c.query_tokens,
                "horizon_years": c.horizon_years,
                "task": c.task.name,
            },
            "train_hash": run_id["train_hash"],
            "train_file": train_name,
            "n_train": len(examples),
            "n_train_target_tokens": int(sum(e.n_target for e in examples)),
            "val_hash": run_id["val_hash"],
            "n_val": len(val_examples),
            "steps": steps,
            "scheduled_steps": total,
            "stopped_early": steps < total,
            "epochs_done": round(steps / steps_per_epoch, 4),
            "best_step": best["step"] if best else None,
            "trainable_parameters": int(sum(p.numel() for p in params)),
            "initial_val_loss": evals[0]["val_loss"] if evals else None,
            "initial_val_auroc": evals[0]["val_auroc"] if evals else None,
            "final_val_loss": best["val_loss"] if best else None,
            "final_val_auroc": best["val_auroc"] if best else None,
            "val_auroc_by_step": {str(r["step"]): r["val_auroc"] for r in evals if r["val_auroc"] is not None},
            "final_train_loss": float(np.mean(tail)) if tail else None,
            "first_train_loss": train_losses[0] if train_losses else None,
        }

    def _save(self, trainable: Any, tok: Any, out: Path, meta: dict[str, Any], history: list[dict[str, Any]]) -> Path:
        tmp = out.with_name(f".{out.name}.final")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        trainable.save_pretrained(str(tmp))
        if not self.config.lora:  # an adapter is loaded on its base model, with the base's tokenizer
            tok.save_pretrained(str(tmp))
        write_json_atomic(tmp / CHECKPOINT_META, meta)
        _write_history(tmp, history, meta)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return out


def _dataset(examples: Sequence[SFTExample]) -> Dataset:
    """Tokenised prompt-completion examples as TRL takes them: ``input_ids`` and a ``completion_mask``."""
    return Dataset.from_dict(
        {
            "input_ids": [e.input_ids for e in examples],
            "completion_mask": [[int(t != IGNORE) for t in e.labels] for e in examples],
        }
    )


def _history(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per optimiser step (and the step-0 evaluation) from the trainer's log."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        step = int(entry.get("step", 0))
        row = rows.setdefault(step, {k: None for k in HISTORY_FIELDS} | {"step": step})
        if "loss" in entry:
            row["train_loss"] = float(entry["loss"])
            row["lr"] = float(entry.get("learning_rate", 0.0))
        if "eval_loss" in entry:
            row["val_loss"] = float(entry["eval_loss"])
        if entry.get("eval_auroc") is not None:
            row["val_auroc"] = float(entry["eval_auroc"])
        if entry.get("epoch") is not None:
            row["epoch"] = round(float(entry["epoch"]), 4)
    return [rows[s] for s in sorted(rows)]


class _ValAUROC:
    """Validation AUROC of the direct readout: P(yes) after the answer prefix of the zero-shot prompt, scored
    with the toolkit's own predictor on the model being trained (what ``icl predict --mode score`` reads)."""

    def __init__(self, causal: Any, tok: Any, patients: list[Patient], config: FinetuneConfig) -> None:
        self.causal, self.tok, self.patients = causal, tok, patients
        self.spec = PredictConfig.from_options(
            k=0,
            mode="score",
            template=SFT_TEMPLATE,
            query_tokens=config.query_tokens,
            horizon_years=config.horizon_years,
            task=config.task,
        )

    def __call__(self) -> float | None:
        from icl_toolkit.backends.hf import HFBackend
        from icl_toolkit.evaluation.metrics import summary
        from icl_toolkit.inference.predictor import Predictor

        labels = cast(list[int], [p.label for p in self.patients])  # validation patients are labelled
        if len(set(labels)) < 2:
            return None
        was = self.causal.training
        backend = HFBackend.from_objects(self.causal, self.tok, model_id="sft-in-training", batch_size=1)
        preds = Predictor(backend, self.spec, progress=False).fit([]).predict_proba(self.patients)
        self.causal.train(was)
        return float(summary(labels, [p.probability for p in preds])["auroc"])  # labels: known, checked above


class ICLTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` with two small extensions.

    * The validation AUROC joins every evaluation's metrics, so early stopping, the choice of the best
      checkpoint and the log all see it (the metrics dict it logs is the one it returns).
    * ``target_positions_only`` (set for CPU runs): the loss applies the output layer only at the positions
      that predict a target token. TRL's fused output layer does so only on Triton devices; elsewhere it
      projects every position, prompt included, which on the CPU made training 2.2x slower on the rationale
      target (``benchmarks/sft_throughput.py``). The loss is the same sum over target tokens divided by
      the same token count (tested against TRL's own); the token accuracy and entropy metrics are kept.
      Multi-GPU runs (and anything that wraps the model) keep TRL's loss.
    """

    val_auroc: _ValAUROC | None = None
    target_positions_only: bool = False

    def log(self, logs: dict[str, Any], start_time: float | None = None) -> None:
        if "eval_loss" in logs and self.val_auroc is not None:
            with self.autocast_smart_context_manager():
                logs["eval_auroc"] = self.val_auroc()
        super().log(logs, start_time)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if not self.target_positions_only or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        import torch
        import torch.nn.functional as F

        mode = "train" if model.training else "eval"
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        extra = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
        hidden = causal.get_decoder()(input_ids=inputs["input_ids"], use_cache=False, **extra).last_hidden_state
        nxt = inputs["labels"][:, 1:]
        sel = nxt != IGNORE
        logits = causal.get_output_embeddings()(hidden[:, :-1][sel]).float()
        targets = nxt[sel]
        n = int(sel.sum())
        denom = num_items_in_batch if num_items_in_batch is not None else max(n, 1)
        loss = F.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(denom, device=logits.device)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        with torch.no_grad():
            logp = logits.log_softmax(-1)
            self._metrics[mode]["entropy"].append(float(-(logp.exp() * logp).sum()) / max(n, 1))
            self._metrics[mode]["mean_token_accuracy"].append(float((logits.argmax(-1) == targets).sum()) / max(n, 1))
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss


class _NotBefore(TrainerCallback):
    """Runs after transformers' ``EarlyStoppingCallback`` (a stateful callback saved under its own class name, so
    it is not subclassed): before step ``min_step`` its patience count is reset and it may not stop training."""

    def __init__(self, stopper: EarlyStoppingCallback, min_step: int) -> None:
        self.stopper, self.min_step = stopper, min_step

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step < self.min_step:
            self.stopper.early_stopping_patience_counter = 0
            control.should_training_stop = False


class ProgressCallback(TrainerCallback):
    """A rich progress bar with the running loss, in place of the trainer's printed log dicts."""

    def __init__(self, desc: str, total: int, enabled: bool) -> None:
        self.desc, self.total, self.enabled = desc, total, enabled
        self._bar: Any = None
        self._advance: Any = None
        self._ema: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._bar = progress_bar(
            self.desc + (f" (resumed at step {state.global_step})" if state.global_step else ""),
            self.total,
            self.enabled,
            initial=state.global_step,
        )
        self._advance = self._bar.__enter__()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self._ema = logs["loss"] if self._ema is None else 0.9 * self._ema + 0.1 * logs["loss"]

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._advance is not None:
            self._advance(1, f"loss {self._ema:.3f}" if self._ema is not None else None)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = self._advance = None


def _write_history(folder: Path, history: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    import csv

    with open(folder / "loss.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
    stop = f", stopped early (best step {meta['best_step']})" if meta.get("stopped_early") else ""
    plot_loss_curve(
        history,
        folder / "loss_curve.png",
        title=f"SFT ({meta['target']} target) of {meta['base_id']}: {meta['n_train']} patients, "
        f"{meta['steps']} steps{stop}",
    )


def plot_loss_curve(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Training loss per step (with a running mean), validation loss points and, on a second axis, the
    validation AUROC of the direct readout."""
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
        ax.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"train (mean of {window})")
    val = [(r["step"], r["val_loss"]) for r in history if r["val_loss"] is not None]
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="validation")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy on target tokens")
    ax.set_title(title, fontsize=9)
    handles, names = ax.get_legend_handles_labels()
    auroc = [(r["step"], r["val_auroc"]) for r in history if r.get("val_auroc") is not None]
    if auroc:
        ax2 = ax.twinx()
        ax2.plot(*zip(*auroc), "s--", color="tab:green", label="validation AUROC (P(yes) readout)")
        ax2.set_ylabel("validation AUROC")
        ax2.set_ylim(0.3, 1.0)
        h2, n2 = ax2.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finetune(
    train: str | Path | Sequence[Patient],
    out: str | Path,
    config: FinetuneConfig | None = None,
    *,
    val: str | Path | Sequence[Patient] | None = None,
    base: str = "default",
    limit: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``base`` on the zero-shot prompt through TRL's SFTTrainer and write a checkpoint folder (``icl
    finetune`` as a function). The checkpoint is then a model for prediction: ``Predictor(open_backend(out))`` or
    ``predict_file(..., model=out)``.

    Args:
        train: the training cohort (a cohort file, or patients) with labels (and rationales for those targets).
        out: the checkpoint folder to write.
        config: the SFT settings (default :class:`~icl_toolkit.training.config.FinetuneConfig` ()).
        val: a validation cohort (file or patients): validation loss and AUROC at each evaluation, early stopping.
        base: the base model: ``"default"`` (the embedded SmolLM2-135M-Instruct) or a checkpoint folder.
        limit: only the first N training patients.
        resume: continue an interrupted run of this ``out`` from the trainer's last save (same settings and data).
        overwrite: replace an existing ``out`` (and discard an interrupted run of it).
        progress: show a progress bar with the running loss.

    Returns:
        The checkpoint folder, its metadata and the training history (:class:`FinetuneResult`).

    Raises:
        ConfigError: ``out`` exists (without ``overwrite``), an interrupted run exists (without ``resume`` or
            ``overwrite``) or was made with other settings or data, data that does not suit the target.
    """
    from icl_toolkit.data.cohort import read_cohort

    def cohort(x: str | Path | Sequence[Patient]) -> tuple[list[Patient], str | None]:
        return (read_cohort(x), str(x)) if isinstance(x, str | Path) else (list(x), None)

    patients, train_name = cohort(train)
    if isinstance(train, str | Path):  # the cohort's task (stored beside it) is the task the checkpoint learns
        from icl_toolkit.data.task import check_same_task, read_cohort_task

        task = read_cohort_task(train)
        if isinstance(val, str | Path):
            check_same_task(
                task.name, read_cohort_task(val).name, f"training cohort {train}", f"validation cohort {val}"
            )
        config = (config or FinetuneConfig()).for_task(task)
    if limit:
        patients = patients[:limit]
    val_patients, val_name = cohort(val) if val is not None else (None, None)
    return Finetuner(config, base=base, progress=progress).fit(
        patients,
        out,
        val=val_patients,
        overwrite=overwrite,
        resume=resume,
        train_name=train_name or "train",
        val_name=val_name or "val",
    )
