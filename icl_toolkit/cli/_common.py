"""Shared pieces of the CLI: consoles, progress bars, and the flag groups the commands share.

Every flag of a config option is generated from its pydantic field (:mod:`icl_toolkit.cli._flags`): the groups
below say only which fields a command takes and how the command line names them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console

from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.cli._flags import FlagGroup, flag_error, with_flags
from icl_toolkit.core.progress import progress_bar, stderr_console
from icl_toolkit.data.task import Task, cohorts_task, load_task
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.inference.ray import RayOptions
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.retrieval.config import RetrievalConfig

__all__ = [
    "console",
    "err_console",
    "progress_bar",
    "flag_error",
    "spec_from_flags",
    "ModelOpt",
    "with_engine_flags",
    "with_spec_flags",
    "with_retriever_flags",
    "with_ray_flags",
    "RETRIEVER_FIELDS",
    "TaskOpt",
    "cohort_task",
]


def _stdout_console() -> Console:
    """stdout: the terminal's width on a terminal (or $COLUMNS when set); 150 columns when stdout is a log or a
    pipe, where Rich would otherwise assume 80 and squeeze every column of a wide table."""
    out = Console(soft_wrap=True)
    return out if out.is_terminal or os.environ.get("COLUMNS") else Console(soft_wrap=True, width=150)


console = _stdout_console()
err_console = stderr_console


def spec_from_flags(model: str, task: Task | None = None, **options: Any) -> PredictConfig:
    """The validated :class:`~icl_toolkit.inference.config.PredictConfig` of these flat options for ``model`` and
    the cohorts' ``task`` (its horizon replaces the default ``--horizon-years``; a bad value is the flag's one-line
    error)."""
    if task is not None:
        options["task"] = task
    try:
        return PredictConfig.from_options(**options).for_model(model)
    except ValidationError as exc:
        raise flag_error(exc) from None


TaskOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Task file (TOML/JSON/YAML: name, question, ...) for cohorts stored without one (<cohort>.task.json); "
        "default: the cohorts' own task, else ADRD."
    ),
]


def cohort_task(files: dict[str, Any], given: Path | None = None) -> Task:
    """The task of a command's cohort files (``{"--cohort": path, ...}``), or of the ``--task`` file for files
    stored without one; files (or a --task) of different tasks are refused by name."""
    return cohorts_task(files, load_task(given) if given is not None else None)


ModelOpt = Annotated[
    str,
    typer.Option(
        help="'default' (embedded SmolLM2-135M-Instruct), a checkpoint or LoRA adapter folder, or a cached hub name."
    ),
]

ENGINE = FlagGroup(EngineOptions)
"""The engine flags of every predicting command (--backend, --device, --dtype, --max-context, ...)."""

RETRIEVER_FIELDS = ("retriever", "prognostic_weight", "prognostic_bandwidth", "folds", "hybrid_weights")
"""What "similar" means: the flags of every command that builds or reads an index."""

SPEC = (
    FlagGroup(
        RetrievalConfig,
        fields=(
            "k",
            "strategy",
            "balance",
            "mmr_lambda",
            "gain_candidates",
            "seed",
            "temporal_guard",
            "horizon_years",
            *RETRIEVER_FIELDS,
        ),
        extra_help={"seed": "Also seeds the random demonstration order."},
    ),
    FlagGroup(
        PromptConfig,
        fields=(
            "demos",
            "rationale",
            "mode",
            "template",
            "order",
            "demo_tokens",
            "query_tokens",
            "reason_tokens",
            "orders",
            "show_risk",
            "stop",
            "no_repeat_ngram",
            "repetition_penalty",
            "seed",
            "horizon_years",
        ),
    ),
    FlagGroup(PredictConfig, fields=("threshold",)),
)
"""A prediction's options (the flat option names of :meth:`PredictConfig.from_options`)."""

RAY = FlagGroup(
    RayOptions,
    fields=("address", "replicas", "gpus_per_replica", "cpus_per_replica", "shard_size", "max_restarts"),
    rename={"address": "ray_address"},
    prefix="ray: ",
)
"""Where and how wide ``--engine ray`` goes."""

with_engine_flags = with_flags("engine", ENGINE)
"""Give a command the engine flags; it receives them as one validated
:class:`~icl_toolkit.backends.options.EngineOptions` argument named ``engine``."""

with_spec_flags = with_flags("spec_options", *SPEC, build=dict)
"""Give a command a prediction's flags; it receives their values as flat spec options named ``spec_options``
(for :func:`spec_from_flags`, with what else the command knows: the model, the context limit)."""


with_retriever_flags = with_flags("retriever_options", FlagGroup(RetrievalConfig, fields=RETRIEVER_FIELDS), build=dict)
"""Give a command the retriever flags; it receives their values as flat spec options named
``retriever_options``."""


with_ray_flags = with_flags("ray_options", RAY, build=dict)
"""Give a command the ``--engine ray`` flags; it receives their values (by :class:`RayOptions` field) as a dict
named ``ray_options``."""
