"""Supervised fine-tuning through TRL.

- :mod:`~icl_toolkit.training.config`: :class:`FinetuneConfig` (targets, LoRA, schedule, early stopping);
- :mod:`~icl_toolkit.training.sft`: the examples, the trainer and the checkpoint with its metadata.
"""
