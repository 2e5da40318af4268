"""``icl finetune``: supervised fine-tuning on label, rationale or step-by-step targets."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from icl_toolkit.cli._common import console, flag_error


class Target(str, Enum):
    label = "label"
    rationale = "rationale"
    stepwise = "stepwise"


class StopOn(str, Enum):
    auroc = "auroc"
    loss = "loss"


class TrainDType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"


def finetune(
    train: Annotated[Path, typer.Option(help="Training cohort (JSONL) with labels (and rationales for those targets).")],
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write.")],
    target: Annotated[Target, typer.Option(help="label: the answer only; rationale / stepwise: that rationale, then the answer.")] = Target.label,
    val: Annotated[Optional[Path], typer.Option(help="Validation cohort for the validation loss.")] = None,
    base: Annotated[str, typer.Option(help="Base model: default (embedded SmolLM2-135M-Instruct) or a checkpoint folder.")] = "default",
    lora: Annotated[bool, typer.Option("--lora/--full", help="Train LoRA adapters (peft) instead of the weights.")] = False,
    epochs: Annotated[float, typer.Option(help="Passes over the training data.")] = 1.0,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many optimiser steps.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default 5e-5, or 5e-4 with --lora).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per optimiser step.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the example order and initialisation.")] = 0,
    train_layers: Annotated[Optional[int], typer.Option(min=1, help="Train only the top N transformer blocks.")] = None,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 16,
    query_tokens: Annotated[int, typer.Option(help="History budget of each training prompt (tokens).")] = 256,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N training patients.")] = None,
    val_limit: Annotated[int, typer.Option(min=1, help="Most validation patients for the validation loss and AUROC.")] = 64,
    eval_steps: Annotated[Optional[int], typer.Option(min=1, help="Evaluate on --val (loss and AUROC) and save a resumable trainer checkpoint every N steps (default: 4 times over the schedule).")] = None,
    eval_points: Annotated[int, typer.Option(min=0, help="Evaluations spread evenly over the schedule when --eval-steps is not given.")] = 4,
    patience: Annotated[int, typer.Option(min=0, help="Stop when --stop-on has not improved for N evaluations; the best evaluation's weights are kept (0: full schedule).")] = 0,
    min_epochs: Annotated[float, typer.Option(min=0.0, help="Judge the plateau only from this many epochs on (earlier evaluations never stop training).")] = 0.0,
    stop_on: Annotated[StopOn, typer.Option(help="Validation metric for early stopping and the best weights.")] = StopOn.auroc,
    dtype: Annotated[TrainDType, typer.Option(help="auto: bf16 autocast where the CPU/GPU computes bf16 natively, else float32.")] = TrainDType.auto,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in the backward pass (less memory, more compute).")] = False,
    gradient_accumulation: Annotated[int, typer.Option(min=1, help="Micro-batches of --batch-size per optimiser step.")] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda (under accelerate launch, the launcher places each process).")] = "cpu",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run of this --out from the trainer's last save (same settings and data).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder (and discard an interrupted run of it).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fine-tune a model on the zero-shot prompt through TRL's SFTTrainer (loss on the target tokens only) and save a
    checkpoint. On several GPUs: accelerate launch --num_processes N -m icl_toolkit.cli finetune ... --device cuda"""
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.training.sft import FinetuneConfig, Finetuner

    try:
        config = FinetuneConfig(target=target.value, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
                                seed=seed, lora=lora, lora_r=lora_r, lora_alpha=2 * lora_r, train_layers=train_layers,
                                query_tokens=query_tokens, val_limit=val_limit, eval_steps=eval_steps, eval_points=eval_points,
                                patience=patience, min_epochs=min_epochs, stop_on=stop_on.value, dtype=dtype.value,
                                gradient_checkpointing=gradient_checkpointing,
                                gradient_accumulation=gradient_accumulation, device=device)
    except ValidationError as exc:
        raise flag_error(exc) from None
    patients = read_cohort(train)
    if limit:
        patients = patients[:limit]
    val_patients = read_cohort(val) if val else None
    result = Finetuner(config, base=base, progress=progress).fit(
        patients, out, val=val_patients, overwrite=overwrite, resume=resume, train_name=str(train),
        val_name=str(val) if val else "val")
    m = result.meta
    val_note = (f", validation loss {m['initial_val_loss']:.3f} -> {m['final_val_loss']:.3f}"
                if m["final_val_loss"] is not None else "")
    if m.get("final_val_auroc") is not None:
        val_note += f", validation AUROC {m['initial_val_auroc']:.3f} -> {m['final_val_auroc']:.3f}"
    if m.get("stopped_early"):
        val_note += f"; stopped early at step {m['steps']} of {m['scheduled_steps']} (kept step {m['best_step']})"
    console.print(f"wrote {result.folder}: {m['target']} SFT of {m['base_id']} on {m['n_train']} patients, "
                  f"{m['steps']} steps in {m['seconds']:.0f} s; train loss {m['first_train_loss']:.3f} -> "
                  f"{m['final_train_loss']:.3f}{val_note}; loss curve {result.folder / 'loss_curve.png'}",
                  highlight=False)
