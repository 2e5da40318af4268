"""The comparison module: fine-tuned and in-context arms side by side on the same patients.

- :mod:`~icl_toolkit.evaluation.compare.config`: ``arms.toml`` (checkpoints, arms expanded from lists, baselines);
- :mod:`~icl_toolkit.evaluation.compare.run`: shared retrieval, resumable per-arm predictions, baselines, outputs;
- :mod:`~icl_toolkit.evaluation.baselines`: logistic regression, age only, kNN vote, oracle;
- :mod:`~icl_toolkit.evaluation.compare.stats`: metrics with bootstrap CIs, paired DeLong tests, subgroups;
- :mod:`~icl_toolkit.evaluation.compare.report`: tables, plots and the report with model cards.
"""

from icl_toolkit.evaluation.compare.config import Arm, ArmSpec, CompareConfig, load_compare_config
from icl_toolkit.evaluation.compare.run import CompareResult, Comparison, compare

__all__ = ["Arm", "ArmSpec", "CompareConfig", "load_compare_config", "Comparison", "CompareResult", "compare"]
