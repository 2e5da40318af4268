"""Synthetic ADRD cohort with a known risk model and grounded teacher-style rationales.

- :mod:`~icl_toolkit.data.synth.risk`: features, effect sizes and the true 5-year risk.
- :mod:`~icl_toolkit.data.synth.vocab`: the clinical codes the records use.
- :mod:`~icl_toolkit.data.synth.generate`: dated records, labels and splits.
- :mod:`~icl_toolkit.data.synth.rationales`: free-text and step-by-step rationales.
"""

from __future__ import annotations

from icl_toolkit.data.synth.generate import (
    GENERATOR_VERSION,
    SynthConfig,
    assign_splits,
    generate_cohort,
    iter_synthetic_patients,
    parse_split,
)

__all__ = [
    "GENERATOR_VERSION",
    "SynthConfig",
    "generate_cohort",
    "iter_synthetic_patients",
    "parse_split",
    "assign_splits",
]
