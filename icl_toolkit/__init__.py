"""icl-toolkit: inference-time demonstrations and prompting for clinical prediction from patient histories.

What a researcher needs, without knowing the package's layout::

    import icl_toolkit as icl

    pool = icl.read_cohort("splits/train.jsonl")          # validated: every problem named with file and line
    test = icl.read_cohort("splits/test.jsonl")
    config = icl.PredictConfig.from_options(k=4, demos="rationale", retriever="prognostic")
    predictor = icl.Predictor(icl.open_backend("default"), config).fit(pool)
    predictions = predictor.predict_proba(test[:8])       # P(yes) with the demonstrations shown, per patient
    print(icl.summary([p.label for p in predictions], [p.probability for p in predictions]))

    icl.predict_file("splits/test.jsonl", "predictions.jsonl", config, pool="splits/train.jsonl")  # resumable
    icl.predict_file("splits/test.jsonl", "preds/", config, pool="splits/train.jsonl", ray=icl.RayOptions(replicas=4))

The package is layered, bottom up (each folder imports only from those below it): ``core`` (errors, files,
artefact metadata, hardware, where models come from), ``data`` (cohorts, serialization, synthetic, OMOP, MEDS),
``retrieval``, ``prompting``, ``backends``, ``inference`` (the spec, the predictor, the run loop, Ray),
``rationales``, ``evaluation`` (metrics, baselines, fairness, comparison, monitoring), ``training`` (SFT), and the
front ends ``cli`` and ``serve``. The names below are loaded when first used, so ``import icl_toolkit`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from icl_toolkit.core import __version__

if TYPE_CHECKING:
    from icl_toolkit.backends.options import EngineOptions, open_backend
    from icl_toolkit.core.errors import CohortValidationError, ConfigError, IclError
    from icl_toolkit.data.cohort import Event, Patient, read_cohort, validate_cohort, write_cohort
    from icl_toolkit.evaluation.compare import CompareConfig, CompareResult, compare, load_compare_config
    from icl_toolkit.evaluation.metrics import bootstrap_ci, delong_test, summary
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.predictor import Prediction, Predictor
    from icl_toolkit.inference.ray import RayOptions
    from icl_toolkit.inference.run import PredictRun, predict_file
    from icl_toolkit.prompting.config import PromptConfig
    from icl_toolkit.retrieval.config import RetrievalConfig
    from icl_toolkit.retrieval.index import DemoIndex, build_index
    from icl_toolkit.training.config import FinetuneConfig
    from icl_toolkit.training.sft import FinetuneResult, finetune

_EXPORTS: dict[str, str] = {
    # data
    "Patient": "icl_toolkit.data.cohort",
    "Event": "icl_toolkit.data.cohort",
    "read_cohort": "icl_toolkit.data.cohort",
    "validate_cohort": "icl_toolkit.data.cohort",
    "write_cohort": "icl_toolkit.data.cohort",
    # retrieval
    "RetrievalConfig": "icl_toolkit.retrieval.config",
    "DemoIndex": "icl_toolkit.retrieval.index",
    "build_index": "icl_toolkit.retrieval.index",
    # prompts, backends
    "PromptConfig": "icl_toolkit.prompting.config",
    "EngineOptions": "icl_toolkit.backends.options",
    "open_backend": "icl_toolkit.backends.options",
    # inference
    "PredictConfig": "icl_toolkit.inference.config",
    "Predictor": "icl_toolkit.inference.predictor",
    "Prediction": "icl_toolkit.inference.predictor",
    "predict_file": "icl_toolkit.inference.run",
    "PredictRun": "icl_toolkit.inference.run",
    "RayOptions": "icl_toolkit.inference.ray",
    # training
    "FinetuneConfig": "icl_toolkit.training.config",
    "finetune": "icl_toolkit.training.sft",
    "FinetuneResult": "icl_toolkit.training.sft",
    # evaluation
    "summary": "icl_toolkit.evaluation.metrics",
    "bootstrap_ci": "icl_toolkit.evaluation.metrics",
    "delong_test": "icl_toolkit.evaluation.metrics",
    "compare": "icl_toolkit.evaluation.compare",
    "CompareConfig": "icl_toolkit.evaluation.compare",
    "CompareResult": "icl_toolkit.evaluation.compare",
    "load_compare_config": "icl_toolkit.evaluation.compare",
    # errors
    "IclError": "icl_toolkit.core.errors",
    "ConfigError": "icl_toolkit.core.errors",
    "CohortValidationError": "icl_toolkit.core.errors",
}

__all__ = [  # the names of _EXPORTS, written out for readers and tools (tests/test_api.py checks they agree)
    "__version__",
    "Patient",
    "Event",
    "read_cohort",
    "validate_cohort",
    "write_cohort",
    "RetrievalConfig",
    "DemoIndex",
    "build_index",
    "PromptConfig",
    "EngineOptions",
    "open_backend",
    "PredictConfig",
    "Predictor",
    "Prediction",
    "predict_file",
    "PredictRun",
    "RayOptions",
    "FinetuneConfig",
    "finetune",
    "FinetuneResult",
    "summary",
    "bootstrap_ci",
    "delong_test",
    "compare",
    "CompareConfig",
    "CompareResult",
    "load_compare_config",
    "IclError",
    "ConfigError",
    "CohortValidationError",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'icl_toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
