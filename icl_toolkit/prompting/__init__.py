"""Prompts: templates (the top-level ``prompts/`` folder, shipped in the wheel), demonstrations, the chat template
and context packing.

- :mod:`~icl_toolkit.prompting.templates`: finding, loading (sandboxed) and hashing the templates;
- :mod:`~icl_toolkit.prompting.builder`: :class:`PromptConfig` and :class:`PromptBuilder`.
"""
