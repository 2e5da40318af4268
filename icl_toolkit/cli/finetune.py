"""``icl finetune``: supervised fine-tuning on label, rationale or step-by-step targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from icl_toolkit.cli._common import console
from icl_toolkit.cli._flags import FlagGroup, with_flags
from icl_toolkit.training.config import FinetuneConfig

SFT = FlagGroup(
    FinetuneConfig,
    fields=(
        "target",
        "lora",
        "epochs",
        "max_steps",
        "lr",
        "batch_size",
        "seed",
        "train_layers",
        "lora_r",
        "query_tokens",
        "val_limit",
        "eval_steps",
        "eval_points",
        "patience",
        "min_epochs",
        "stop_on",
        "dtype",
        "gradient_checkpointing",
        "gradient_accumulation",
        "device",
    ),
    decls={"lora": "--lora/--full"},
)
"""The SFT settings a run takes from the command line (the rest keep their defaults)."""


@with_flags("config", SFT)
def finetune(
    train: Annotated[
        Path, typer.Option(help="Training cohort (JSONL) with labels (and rationales for those targets).")
    ],
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write.")],
    val: Annotated[
        Optional[Path],
        typer.Option(help="Validation cohort: validation loss and AUROC at each evaluation, early stopping."),
    ] = None,
    base: Annotated[
        str, typer.Option(help="Base model: default (embedded SmolLM2-135M-Instruct) or a checkpoint folder.")
    ] = "default",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N training patients.")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run of this --out from the trainer's last save (same settings and data)."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --out folder (and discard an interrupted run of it).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    *,
    config: FinetuneConfig,
) -> None:
    """Fine-tune a model on the zero-shot prompt through TRL's SFTTrainer (loss on the target tokens only) and save a
    checkpoint. On several GPUs: accelerate launch --num_processes N -m icl_toolkit.cli finetune ... --device cuda"""
    from icl_toolkit.training.sft import finetune as run_sft

    result = run_sft(
        train, out, config, val=val, base=base, limit=limit, resume=resume, overwrite=overwrite, progress=progress
    )
    m = result.meta
    val_note = (
        f", validation loss {m['initial_val_loss']:.3f} -> {m['final_val_loss']:.3f}"
        if m["final_val_loss"] is not None
        else ""
    )
    if m.get("final_val_auroc") is not None:
        val_note += f", validation AUROC {m['initial_val_auroc']:.3f} -> {m['final_val_auroc']:.3f}"
    if m.get("stopped_early"):
        val_note += f"; stopped early at step {m['steps']} of {m['scheduled_steps']} (kept step {m['best_step']})"
    console.print(
        f"wrote {result.folder}: {m['target']} SFT of {m['base_id']} on {m['n_train']} patients, "
        f"{m['steps']} steps in {m['seconds']:.0f} s; train loss {m['first_train_loss']:.3f} -> "
        f"{m['final_train_loss']:.3f}{val_note}; loss curve {result.folder / 'loss_curve.png'}",
        highlight=False,
    )
