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
    val_limit: Annotated[int, typer.Option(min=1, help="Most validation patients for the validation loss.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fine-tune a model on the zero-shot prompt (loss on the target tokens only) and save a checkpoint."""
    from icl_toolkit.cohort import read_cohort
    from icl_toolkit.finetune import FinetuneConfig, Finetuner

    try:
        config = FinetuneConfig(target=target.value, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
                                seed=seed, lora=lora, lora_r=lora_r, lora_alpha=2 * lora_r, train_layers=train_layers,
                                query_tokens=query_tokens, val_limit=val_limit)
    except ValidationError as exc:
        raise flag_error(exc) from None
    patients = read_cohort(train)
    if limit:
        patients = patients[:limit]
    val_patients = read_cohort(val) if val else None
    result = Finetuner(config, base=base, progress=progress).fit(
        patients, out, val=val_patients, overwrite=overwrite, train_name=str(train),
        val_name=str(val) if val else "val")
    m = result.meta
    val_note = (f", validation loss {m['initial_val_loss']:.3f} -> {m['final_val_loss']:.3f}"
                if m["final_val_loss"] is not None else "")
    console.print(f"wrote {result.folder}: {m['target']} SFT of {m['base_id']} on {m['n_train']} patients, "
                  f"{m['steps']} steps in {m['seconds']:.0f} s; train loss {m['first_train_loss']:.3f} -> "
                  f"{m['final_train_loss']:.3f}{val_note}; loss curve {result.folder / 'loss_curve.png'}",
                  highlight=False)
