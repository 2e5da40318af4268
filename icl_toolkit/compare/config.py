"""The comparison's configuration: checkpoints, arms (expanded from lists), baselines, statistics.

An ``arms.toml`` looks like::

    reference = "base / none / score"      # the arm every other is tested against (default: the first)
    limit = 100                            # first N test patients (default: all)
    val_limit = 50                         # first N validation patients (thresholds)
    bootstrap = 1000
    seed = 0
    baselines = ["logreg", "knn", "age", "oracle"]

    [checkpoints]
    base = "default"
    label_sft = "ckpt/label"

    [prompt]                               # shared by every arm (icl predict's options)
    query_tokens = 256
    demo_tokens = 160

    [engine]                               # as icl predict's flags (default: hf on the CPU)
    backend = "vllm"
    dtype = "bfloat16"

    [[arm]]                                # a list in any field expands to every combination
    checkpoint = ["base", "label_sft"]
    demos = ["none", "label", "rationale"]
    k = 4
    mode = "score"

An arm with ``demos = "none"`` has no k or strategy; combinations that differ
only there collapse into one arm. Arm names default to
``checkpoint / demos k=K strategy / mode``.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.errors import ConfigError

__all__ = ["ArmSpec", "Arm", "CompareConfig", "load_compare_config", "BASELINES"]

BASELINES = ("logreg", "knn", "age", "oracle")
DemosT = Literal["none", "label", "rationale"]
ModeT = Literal["score", "reason"]
StrategyT = Literal["similar", "balanced", "mmr", "random"]


def _listify(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


class ArmSpec(BaseModel):
    """One ``[[arm]]`` table; list-valued fields expand to every combination."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    """Name of the arm (only for a spec that expands to one arm)."""
    checkpoint: str | list[str] = "base"
    """Name(s) from ``[checkpoints]``."""
    demos: DemosT | list[DemosT] = "none"
    k: int | list[int] = 4
    strategy: StrategyT | list[StrategyT] = "similar"
    mode: ModeT | list[ModeT] = "score"
    rationale: Literal["free_text", "stepwise"] = "free_text"
    """Which rationale rationale-demos show."""
    template: str | None = None
    """Prompt template override (default: by demos and mode; a fine-tuned checkpoint in reason mode
    without demos uses the template it was trained on)."""

    @field_validator("k")
    @classmethod
    def _k(cls, value: int | list[int]) -> int | list[int]:
        for k in _listify(value):
            if not 1 <= k <= 1024:
                raise ValueError(f"k must be between 1 and 1024 (use demos = \"none\" for no demos), got {k}")
        return value


class Arm(BaseModel):
    """One concrete arm of the comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    checkpoint: str
    demos: DemosT
    k: int
    strategy: str
    mode: ModeT
    rationale: str = "free_text"
    template: str | None = None

    @property
    def slug(self) -> str:
        """A file-name-safe form of the name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_")

    @property
    def retrieval_key(self) -> tuple[str, int] | None:
        """(strategy, k) of the retrieval this arm uses; ``None`` without demos."""
        return None if self.demos == "none" else (self.strategy, self.k)


class CompareConfig(BaseModel):
    """The whole comparison (validated; unknown fields rejected, with their location)."""

    model_config = ConfigDict(extra="forbid")

    checkpoints: dict[str, str] = Field(default_factory=lambda: {"base": "default"})
    """Checkpoint name -> ``"default"``, a checkpoint folder (relative to the config file) or a cached hub name."""
    arm: list[ArmSpec] = Field(min_length=1)
    reference: str | None = None
    """Name of the reference arm for the paired DeLong tests (default: the first arm)."""
    baselines: list[Literal["logreg", "knn", "age", "oracle"]] = Field(default_factory=lambda: list(BASELINES))
    limit: int | None = Field(None, ge=1)
    """Use the first N test patients (the same N for every arm)."""
    val_limit: int | None = Field(None, ge=1)
    """Use the first N validation patients (for the F1 thresholds)."""
    bootstrap: int = Field(1000, ge=1)
    """Bootstrap resamples for the confidence intervals."""
    seed: int = 0
    """Seed of the bootstrap (and of the retrieval's random choices)."""
    engine: EngineOptions = Field(default_factory=EngineOptions)
    """The ``[engine]`` table: backend and engine settings, as the flags of ``icl predict`` (``backend``,
    ``device``, ``batch_size``, ``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
    ``tensor_parallel_size``, ``max_lora_rank``, ``url``, ``served_model``). ``backend``, ``device`` and
    ``batch_size`` may also stand at the top level."""
    index_kind: Literal["exact", "hnsw"] = "exact"
    retrieval: dict[str, Any] = Field(default_factory=dict)
    """Shared retrieval settings (``balance``, ``mmr_lambda``, ``temporal_guard``, ``horizon_years``)."""
    prompt: dict[str, Any] = Field(default_factory=dict)
    """Shared prompt settings (``demo_tokens``, ``query_tokens``, ``reason_tokens``, ``order``, ...)."""

    @model_validator(mode="before")
    @classmethod
    def _engine_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and {"backend", "device", "batch_size"} & set(data):
            data = dict(data)
            engine = dict(data.get("engine") or {})
            for key in ("backend", "device", "batch_size"):
                if key in data:
                    if key in engine:
                        raise ValueError(f"{key} is set both at the top level and in [engine]; keep one")
                    engine[key] = data.pop(key)
            data["engine"] = engine
        return data

    @field_validator("retrieval")
    @classmethod
    def _retrieval(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = set(value) & {"k", "strategy", "seed"}
        if bad:
            raise ValueError(f"set {', '.join(sorted(bad))} per [[arm]] (or the top-level seed), not in [retrieval]")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = set(value) & {"demos", "mode", "template", "rationale"}
        if bad:
            raise ValueError(f"set {', '.join(sorted(bad))} per [[arm]], not in [prompt]")
        return value

    def arms(self) -> list[Arm]:
        """Every concrete arm, in spec order, without duplicates."""
        out: dict[tuple[Any, ...], Arm] = {}
        for i, spec in enumerate(self.arm, 1):
            combos = list(itertools.product(_listify(spec.checkpoint), _listify(spec.demos), _listify(spec.k),
                                            _listify(spec.strategy), _listify(spec.mode)))
            if spec.name and len(combos) > 1:
                raise ConfigError(f"[[arm]] #{i} ({spec.name!r}) expands to {len(combos)} arms, so it cannot have "
                                  "one name; drop 'name' to get automatic names.")
            for ckpt, demos, k, strategy, mode in combos:
                if ckpt not in self.checkpoints:
                    raise ConfigError(f"[[arm]] #{i}: checkpoint {ckpt!r} is not in [checkpoints] (there: "
                                      f"{', '.join(self.checkpoints)}).")
                if demos == "none":
                    k, strategy = 0, "-"
                key = (ckpt, demos, k, strategy, mode, spec.rationale, spec.template)
                if key in out:
                    continue
                shown = "none" if demos == "none" else f"{demos} k={k} {strategy}"
                if demos == "rationale" and spec.rationale == "stepwise":
                    shown += " stepwise"
                name = spec.name or f"{ckpt} / {shown} / {mode}"
                out[key] = Arm(name=name, checkpoint=ckpt, demos=demos, k=k, strategy=strategy, mode=mode,
                               rationale=spec.rationale, template=spec.template)
        arms = list(out.values())
        names = [a.name for a in arms]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"Arm names must be unique; repeated: {', '.join(sorted(dup))}.")
        slugs = [a.slug for a in arms]
        if len(set(slugs)) != len(slugs):
            raise ConfigError("Two arm names map to the same file name; rename one of them.")
        if self.reference is not None and self.reference not in names:
            raise ConfigError(f"reference = {self.reference!r} is not an arm. Arms: {'; '.join(names)}.")
        return arms

    @property
    def reference_arm(self) -> str:
        return self.reference or self.arms()[0].name


def load_compare_config(path: str | Path) -> tuple[CompareConfig, Path]:
    """Read and validate ``arms.toml``; checkpoint folders are resolved relative to it.

    Returns:
        the config and the folder the relative paths are taken from.

    Raises:
        ConfigError: unreadable TOML (with line and column) or an invalid field (with its location).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}.") from None
    try:
        config = CompareConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            loc = re.sub(r"^arm\.(\d+)", lambda m: f"[[arm]] #{int(m.group(1)) + 1}", loc)
            problems.append(f"{path}: {loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("Invalid comparison config:\n" + "\n".join(problems)) from None
    base = path.resolve().parent
    resolved = {}
    for name, target in config.checkpoints.items():
        local = (base / target).expanduser()
        resolved[name] = str(local) if not Path(target).is_absolute() and local.exists() else target
    config.checkpoints = resolved
    config.arms()  # validate the expansion now
    return config, base
