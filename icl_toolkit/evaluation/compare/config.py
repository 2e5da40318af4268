"""The comparison's configuration: checkpoints, arms (expanded from lists), baselines, statistics.

An ``arms.toml`` looks like::

    reference = "base / none / score"      # the arm every other is tested against (default: the first)
    contrasts = [["label_sft / none / score", "base / none / score"]]   # more paired DeLong tests
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

import difflib
import itertools
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.task import ADRD, Task
from icl_toolkit.evaluation.card import ModelCard
from icl_toolkit.evaluation.tabular import TabularConfig
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.inference.gain import GainConfig
from icl_toolkit.prompting.config import Demos, Mode, PromptConfig, RationaleStyle
from icl_toolkit.retrieval.config import RetrievalConfig, Strategy
from icl_toolkit.retrieval.index import IndexKind

__all__ = ["ArmSpec", "Arm", "CompareConfig", "load_compare_config", "BASELINES"]

OPTION_DEFAULTS: dict[str, Any] = {
    "orders": 1,
    "show_risk": False,
    "stop": (),
    "no_repeat_ngram": 0,
    "repetition_penalty": 1.0,
}
"""The per-arm options that name a variant of an arm, with their defaults (an arm at these is the plain arm)."""

Baseline = Literal["logreg", "gbt", "knn", "age", "oracle", "risk"]
BASELINES: tuple[str, ...] = get_args(Baseline)
PER_ARM = {
    "retrieval": ("k", "strategy", "seed"),
    "prompt": (
        "demos",
        "mode",
        "template",
        "rationale",
        "seed",
        "orders",
        "show_risk",
        "stop",
        "no_repeat_ngram",
        "repetition_penalty",
    ),
}
"""Options set per ``[[arm]]`` (or, for ``seed``, at the top level), never in the shared tables."""


def _shared_section(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The spec section ``model`` without its per-arm fields: the same field definitions (types, ranges,
    defaults, docs), so a shared table is validated exactly as the spec validates that section."""
    fields = {
        f: (info.annotation, info)
        for f, info in model.model_fields.items()
        if f not in PER_ARM[name] and f != "task"  # the task comes with the cohorts
    }
    return create_model(
        f"Shared{name.title()}",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=f"The [{name}] table of arms.toml.",
        **fields,
    )  # type: ignore[call-overload]


if TYPE_CHECKING:  # built at import time: a type checker sees a model
    SharedRetrieval = BaseModel
    SharedPrompt = BaseModel
else:
    SharedRetrieval = _shared_section(RetrievalConfig, "retrieval")
    SharedPrompt = _shared_section(PromptConfig, "prompt")


def _listify(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


class ArmSpec(BaseModel):
    """One ``[[arm]]`` table; list-valued fields expand to every combination."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    """Name of the arm (only for a spec that expands to one arm)."""
    kind: Literal["prompt", "probe"] = "prompt"
    """``prompt``: the model's answer to a prompt; ``probe``: a logistic regression on the frozen model's hidden
    states of the zero-shot prompt, fit on the pool, layer, pooling and C chosen on the validation patients
    (no demos; the transformers backend)."""
    checkpoint: str | list[str] = "base"
    """Name(s) from ``[checkpoints]``."""
    demos: Demos | list[Demos] = "none"
    k: int | list[int] = 4
    strategy: Strategy | list[Strategy] = "similar"
    mode: Mode | list[Mode] = "score"
    rationale: RationaleStyle = "free_text"
    """Which rationale rationale-demos show."""
    template: str | None = None
    """Prompt template override (default: by demos and mode; a fine-tuned checkpoint in reason mode
    without demos uses the template it was trained on)."""
    orders: int | list[int] = 1
    """Order ensemble size(s): P(yes) averaged over this many demo orders (1: the configured order only)."""
    show_risk: bool | list[bool] = False
    """Show the pool model's risk of the patient and of each demo in the prompt."""
    stop: list[str] = Field(default_factory=list)
    """Reason mode: more strings that end the reasoning."""
    no_repeat_ngram: int = 0
    """Reason mode: no n-gram of this many tokens repeats in the reasoning (0: off)."""
    repetition_penalty: float = 1.0
    """Reason mode: penalty on repeated tokens (1: off)."""

    @field_validator("k")
    @classmethod
    def _k(cls, value: int | list[int]) -> int | list[int]:
        for k in _listify(value):
            if not 1 <= k <= 1024:
                raise ValueError(f'k must be between 1 and 1024 (use demos = "none" for no demos), got {k}')
        return value


class Arm(BaseModel):
    """One concrete arm of the comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    checkpoint: str
    demos: Demos
    k: int
    strategy: str
    mode: Mode
    rationale: RationaleStyle = "free_text"
    template: str | None = None
    kind: Literal["prompt", "probe"] = "prompt"
    orders: int = 1
    show_risk: bool = False
    stop: tuple[str, ...] = ()
    no_repeat_ngram: int = 0
    repetition_penalty: float = 1.0

    def options(self) -> dict[str, Any]:
        """This arm's prediction options (the spec's names); an arm without demos has no k or strategy. Options
        left at their defaults are not set, so an arm made before they existed resumes under the same spec."""
        out: dict[str, Any] = {
            "demos": self.demos,
            "mode": self.mode,
            "rationale": self.rationale,
            "template": self.template,
        }
        extra = {
            name: getattr(self, name) for name, default in OPTION_DEFAULTS.items() if getattr(self, name) != default
        }
        return out | extra | ({"k": 0} if self.demos == "none" else {"k": self.k, "strategy": self.strategy})

    @property
    def variant(self) -> str:
        """What the arm's options add to its name: `` orders=5``, `` +risk``, `` stop(ngram=4)`` ..."""
        out = ""
        if self.orders > 1:
            out += f" orders={self.orders}"
        if self.show_risk:
            out += " +risk"
        rule = [f"ngram={self.no_repeat_ngram}"] if self.no_repeat_ngram else []
        rule += [f"penalty={self.repetition_penalty:g}"] if self.repetition_penalty != 1.0 else []
        rule += [f"stop={s.strip() or repr(s)}" for s in self.stop]
        return out + (f" stop({', '.join(rule)})" if rule else "")

    def without_options(self) -> Arm:
        """The same arm without the options of :attr:`variant` (what each option is tested against)."""
        plain = self.model_copy(update=dict(OPTION_DEFAULTS))
        return plain.model_copy(update={"name": self.name.replace(self.variant, "") if self.variant else self.name})

    @property
    def slug(self) -> str:
        """A file-name-safe form of the name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_")

    @property
    def retrieval_key(self) -> tuple[str, int] | None:
        """(strategy, k) of the retrieval this arm uses; ``None`` without demos."""
        return None if self.demos == "none" or self.strategy == "gain" else (self.strategy, self.k)


class CompareConfig(BaseModel):
    """The whole comparison (validated; unknown fields rejected, with their location)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    checkpoints: dict[str, str] = Field(default_factory=lambda: {"base": "default"})
    """Checkpoint name -> ``"default"``, a checkpoint folder (relative to the config file) or a cached hub name."""
    arm: list[ArmSpec] = Field(min_length=1)
    """The ``[[arm]]`` tables: each a checkpoint with demonstration settings; a list in a setting expands into
    one arm per value."""
    reference: str | None = None
    """Name of the reference arm for the paired DeLong tests (default: the first arm)."""
    contrasts: list[tuple[str, str]] = Field(default_factory=list)
    """Named paired comparisons besides the reference: ``[["label_sft / none / score", "rationale_sft / none /
    score"], ...]``; each gives the AUROC difference (first minus second), its 95% CI and the DeLong p."""
    baselines: list[Baseline] = Field(default_factory=lambda: list(get_args(Baseline)))
    """Baselines on the same patients: ``logreg`` (codes present, age and sex; ``C`` tuned on the validation
    patients), ``gbt`` (LightGBM trees on windowed code counts and value aggregates, tuned on the validation
    patients), ``knn`` (the vote of the neighbours shown), ``age``, ``oracle``, ``risk`` (the pool model's risk
    that ``show_risk`` arms show; added by itself when such an arm runs)."""
    gain: GainConfig = Field(default_factory=GainConfig)
    """The ``[gain]`` table: how the gain scores of ``strategy = "gain"`` arms are measured on the pool
    (``neighbours``, ``limit``, ``folds``, ``seed``), once per checkpoint, stored under ``gain/<checkpoint>/``."""
    tabular: TabularConfig = Field(default_factory=TabularConfig)
    """The ``[tabular]`` table: feature ``windows`` (days before the index date, or ``"all"``) and the
    ``trials`` of the trees' search."""
    limit: int | None = Field(None, ge=1)
    """Use the first N test patients (the same N for every arm)."""
    val_limit: int | None = Field(None, ge=1)
    """Use N validation patients (for the F1 thresholds), drawn as ``val_draw`` says."""
    val_draw: Literal["stratified", "first"] = "stratified"
    """How ``val_limit`` patients are drawn from a longer validation file: ``stratified`` keeps its share of cases
    (at least one of each class when it has both; the first ones of each class, in file order), ``first`` takes
    the first N lines (which may hold no case, leaving no threshold to choose)."""
    bootstrap: int = Field(1000, ge=1)
    """Bootstrap resamples for the confidence intervals."""
    card: ModelCard = Field(default_factory=ModelCard)
    """The ``[card]`` table: owner, contact, intended_use, out_of_scope_use, review_date, printed in every model
    card of the report with the data's content hashes."""
    fairness_bootstrap: int = Field(200, ge=0)
    """Bootstrap resamples of the subgroup and fairness intervals (fairlearn's ``MetricFrame``; 0: point values
    only). Each costs about 10-40 ms per entry and grouping on 2 cores."""
    seed: int = 0
    """Seed of the bootstrap (and of the retrieval's random choices)."""
    engine: EngineOptions = Field(default_factory=EngineOptions)
    """The ``[engine]`` table: backend and engine settings, as the flags of ``icl predict`` (``backend``,
    ``device``, ``batch_size``, ``dtype``, ``max_context``, ``gpu_memory_utilization``,
    ``tensor_parallel_size``, ``max_lora_rank``, ``url``, ``served_model``). ``backend``, ``device`` and
    ``batch_size`` may also stand at the top level."""
    index_kind: IndexKind = "auto"
    """The pool's index: ``exact``, ``hnsw`` or ``auto`` (exact up to 50,000 patients)."""
    retrieval: SharedRetrieval = Field(default_factory=lambda: SharedRetrieval())
    """Shared retrieval settings (``balance``, ``mmr_lambda``, ``temporal_guard``, ``horizon_years``), validated
    as the spec's retrieval section when the file is loaded."""
    prompt: SharedPrompt = Field(default_factory=lambda: SharedPrompt())
    """Shared prompt settings (``demo_tokens``, ``query_tokens``, ``reason_tokens``, ``order``, ``max_context``,
    ...), validated as the spec's prompt section when the file is loaded."""
    task: Task = ADRD
    """The task every arm's prompts ask about: :func:`compare` sets it from the test cohort's task file
    (``<test>.task.json``; default ADRD); written here, it must agree with the cohorts'."""

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

    def shared_options(self) -> dict[str, Any]:
        """The options every arm shares: ``[retrieval]`` and ``[prompt]`` as written, and the seed."""
        return {
            **self.retrieval.model_dump(exclude_unset=True),
            **self.prompt.model_dump(exclude_unset=True),
            "seed": self.seed,
        }

    def spec(self, arm: Arm) -> PredictConfig:
        """The prediction spec of one arm (its model's trained template resolved)."""
        return PredictConfig.from_options(**self.shared_options(), **arm.options(), task=self.task).for_model(
            self.checkpoints[arm.checkpoint]
        )

    def retrieval_config(self, strategy: str, k: int) -> RetrievalConfig:
        """The retrieval settings of ``strategy`` and ``k`` under the shared settings (one cache per pair)."""
        return PredictConfig.from_options(**self.shared_options(), demos="label", k=k, strategy=strategy).retrieval

    def arms(self) -> list[Arm]:
        """Every concrete arm, in spec order, without duplicates."""
        out: dict[tuple[Any, ...], Arm] = {}
        for i, spec in enumerate(self.arm, 1):
            combos = list(
                itertools.product(
                    _listify(spec.checkpoint),
                    _listify(spec.demos),
                    _listify(spec.k),
                    _listify(spec.strategy),
                    _listify(spec.mode),
                    _listify(spec.orders),
                    _listify(spec.show_risk),
                )
            )
            if spec.name and len(combos) > 1:
                raise ConfigError(
                    f"[[arm]] #{i} ({spec.name!r}) expands to {len(combos)} arms, so it cannot have "
                    "one name; drop 'name' to get automatic names."
                )
            if spec.kind == "probe" and (
                set(_listify(spec.demos)) != {"none"} or set(_listify(spec.mode)) != {"score"}
            ):
                raise ConfigError(
                    f'[[arm]] #{i}: a probe reads the zero-shot prompt, so it takes demos = "none" and mode = '
                    '"score" (the defaults); drop demos and mode from it.'
                )
            for ckpt, demos, k, strategy, mode, orders, show_risk in combos:
                if ckpt not in self.checkpoints:
                    raise ConfigError(
                        f"[[arm]] #{i}: checkpoint {ckpt!r} is not in [checkpoints] (there: "
                        f"{', '.join(self.checkpoints)})."
                    )
                if demos == "none":
                    k, strategy, orders = 0, "-", 1
                rule = (tuple(spec.stop), spec.no_repeat_ngram, spec.repetition_penalty)
                key = (
                    ckpt,
                    demos,
                    k,
                    strategy,
                    mode,
                    spec.rationale,
                    spec.template,
                    spec.kind,
                    orders,
                    show_risk,
                    rule,
                )
                if key in out:
                    continue
                shown = "none" if demos == "none" else f"{demos} k={k} {strategy}"
                if demos == "rationale" and spec.rationale == "stepwise":
                    shown += " stepwise"
                arm = Arm(
                    name="-",
                    checkpoint=ckpt,
                    demos=demos,
                    k=k,
                    strategy=strategy,
                    mode=mode,
                    rationale=spec.rationale,
                    template=spec.template,
                    kind=spec.kind,
                    orders=orders,
                    show_risk=show_risk,
                    stop=tuple(spec.stop),
                    no_repeat_ngram=spec.no_repeat_ngram,
                    repetition_penalty=spec.repetition_penalty,
                )
                name = spec.name or (
                    f"{ckpt} / probe" if spec.kind == "probe" else f"{ckpt} / {shown} / {mode}{arm.variant}"
                )
                out[key] = arm.model_copy(update={"name": name})
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
        for i, pair in enumerate(self.contrasts, 1):
            for name in pair:
                if name not in names:
                    raise ConfigError(f"contrasts #{i}: {name!r} is not an arm. Arms: {'; '.join(names)}.")
        return arms

    def option_contrasts(self, arms: list[Arm]) -> list[tuple[str, str, str]]:
        """The contrasts each option of an arm (order ensemble, gain selection, risk shown, stop rule) is judged
        by, as ``(a, b, question)``: against the same arm without it and against its checkpoint's zero-shot
        arm (when those are among ``arms``); the vote of its demos and the risk score shown are added with the
        baselines (:func:`~icl_toolkit.evaluation.compare.stats.standard_contrasts`)."""
        names = {a.name for a in arms}
        out = []
        for arm in arms:
            if arm.kind != "prompt":
                continue
            if arm.variant:
                plain = arm.without_options().name
                if plain in names:
                    out.append((arm.name, plain, f"what does{arm.variant} add to the same arm without it?"))
            if arm.strategy == "gain":
                similar = arm.name.replace(" gain ", " similar ", 1)
                if similar in names:
                    out.append((arm.name, similar, "does selection by gain beat the most similar demos?"))
            zero = f"{arm.checkpoint} / none / {arm.mode}"
            if (arm.variant or arm.strategy == "gain") and arm.demos != "none" and zero in names:
                out.append((arm.name, zero, "what do the demos add over zero-shot?"))
        return out

    @property
    def reference_arm(self) -> str:
        return self.reference or self.arms()[0].name


_TABLES: dict[str, type[BaseModel]] = {
    "prompt": SharedPrompt,
    "retrieval": SharedRetrieval,
    "engine": EngineOptions,
    "arm": ArmSpec,
}


def _where(loc: tuple[Any, ...]) -> str:
    """A validation error's location as the file writes it: ``[prompt].demo_tokens``, ``[[arm]] #2.k``."""
    if not loc:
        return "-"
    head, rest = str(loc[0]), [str(x) for x in loc[1:]]
    if head == "arm" and rest and rest[0].isdigit():
        return ".".join([f"[[arm]] #{int(rest[0]) + 1}", *rest[1:]])
    if head in _TABLES and rest:
        return ".".join([f"[{head}]", *rest])
    return ".".join([head, *rest])


def _problem(err: Mapping[str, Any]) -> str:
    """A validation error's message; an unknown key lists the known ones of its table."""
    loc = err["loc"]
    if err["type"] == "extra_forbidden":
        table = str(loc[0]) if len(loc) > 1 else ""
        if str(loc[-1]) in PER_ARM.get(table, ()):
            return (
                f"set {loc[-1]} per [[arm]]{' (seed at the top level)' if loc[-1] == 'seed' else ''}, not in [{table}]"
            )
        known = list(_TABLES.get(table, CompareConfig).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key; {hint}known keys here: {', '.join(known)}"
    return f"{err['msg']} (got {err.get('input')!r})"


def load_compare_config(path: str | Path) -> tuple[CompareConfig, Path]:
    """Read and validate ``arms.toml``; checkpoint folders are resolved relative to it.

    Args:
        path: the arms file (TOML).

    Returns:
        The config and the folder the relative paths are taken from.

    Raises:
        ConfigError: unreadable TOML (with line and column) or an invalid field (with its location).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no comparison config here (file not found).") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a comparison config (not UTF-8 text: invalid byte at offset {exc.start}). "
            "Save it as UTF-8 TOML."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}.") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply to read).") from None
    try:
        config = CompareConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{path}: {_where(err['loc'])}: {_problem(err)}" for err in exc.errors()]
        raise ConfigError("Invalid comparison config:\n" + "\n".join(problems)) from None
    base = path.resolve().parent
    resolved = {}
    for name, target in config.checkpoints.items():
        local = (base / target).expanduser()
        resolved[name] = str(local) if not Path(target).is_absolute() and local.exists() else target
    config.checkpoints = resolved
    for arm in config.arms():  # validate the expansion and every arm's spec now, before anything is built
        try:
            config.spec(arm)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"{path}: arm {arm.name!r}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return config, base
