"""The settings of one SFT run: :class:`FinetuneConfig` (validated; ``icl finetune``'s flags are its fields)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field

from icl_toolkit.data.task import WithTask

__all__ = ["Target", "TARGETS", "FinetuneConfig"]

Target = Literal["label", "rationale", "stepwise"]
"""What the assistant learns to write after the zero-shot prompt: the answer line, or that rationale then the
answer line."""
TARGETS: tuple[str, ...] = get_args(Target)


class FinetuneConfig(WithTask):
    """Settings of one SFT run (validated; unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    target: Target = "label"
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
    """LoRA rank."""
    lora_alpha: int | None = Field(None, ge=1)
    """LoRA scaling numerator (default twice the rank)."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA adapters' inputs."""
    train_layers: int | None = Field(None, ge=1)
    """Train only the top N transformer blocks (and the final norm); default all."""
    warmup: float = Field(0.1, ge=0, lt=1)
    """Share of the steps spent warming the learning rate up."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradients are clipped to this norm."""
    query_tokens: int = Field(256, ge=90)
    """History budget of each training prompt, in model tokens (shorter trains faster)."""
    horizon_years: float = Field(5.0, gt=0)
    """Outcome window of the labels, in years (shown in the prompt)."""
    val_limit: int = Field(64, ge=1)
    """Most validation patients used for the validation loss and AUROC."""
    eval_points: int = Field(4, ge=0)
    """Evaluations spread over training (besides one before the first step) when ``eval_steps`` is not set."""
    eval_steps: int | None = Field(None, ge=1)
    """Evaluate (and save a resumable trainer checkpoint) every N optimiser steps."""
    patience: int = Field(0, ge=0)
    """Stop after this many evaluations without improvement of ``stop_on`` (0: train the full schedule)."""
    stop_on: Literal["auroc", "loss"] = "auroc"
    """Validation metric that early stopping and the choice of the best weights follow."""
    min_delta: float = Field(0.0, ge=0)
    """Smallest change of ``stop_on`` that counts as an improvement."""
    min_epochs: float = Field(0.0, ge=0)
    """Early stopping judges the plateau only from this many epochs on: evaluations before it never stop training
    nor count towards ``patience`` (they still compete for the best weights)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute precision: ``bfloat16`` trains under bf16 autocast with fp32 weights; ``auto`` picks it where the
    CPU or GPU computes bf16 natively (:mod:`icl_toolkit.core.hardware`)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""
    gradient_accumulation: int = Field(1, ge=1)
    """Micro-batches per optimiser step (``batch_size`` is the micro-batch)."""
    device: str = "cpu"
    """``cpu`` or ``cuda``; under ``accelerate launch`` the launcher places each process."""

    @property
    def alpha(self) -> int:
        """The LoRA scaling numerator in effect: ``lora_alpha``, or twice the rank when it is not set."""
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (5e-4 if self.lora else 5e-5)

    def run_settings(self) -> dict[str, Any]:
        """What the trained weights depend on (checked when an interrupted run is resumed)."""
        # min_epochs decides only when training may stop, not the trajectory up to it: a run is resumable across it
        return self.model_dump(exclude={"device", "min_epochs"}) | {"lr": self.learning_rate, "lora_alpha": self.alpha}
