"""One validated spec of a prompted prediction, shared by every front end.

``icl predict``'s flags, ``icl compare``'s ``arms.toml`` (its ``[retrieval]``
and ``[prompt]`` tables, the top-level ``seed`` and each arm), ``icl serve``'s
start-up flags and per-request options, and library callers all describe a
prediction with the same option names, and all become a :class:`PredictConfig`
through :meth:`PredictConfig.from_options`. Each name belongs to the section
that has it (``k``, ``strategy``, ``balance``, ``mmr_lambda``,
``temporal_guard`` to retrieval; ``demos``, ``rationale``, ``mode``,
``template``, ``order``, the token budgets and ``max_context`` to the prompt;
``seed`` and ``horizon_years`` to both; ``threshold`` to the top), so an
unknown or misspelt option is refused wherever it is written, before any index
or model is built.

Rules decided here and nowhere else:

- **No demonstrations is one setting.** ``k = 0`` or ``demos = "none"`` both
  mean zero-shot; the config stores it as ``k = 0, demos = "none"`` either way,
  so two spellings of zero-shot resume each other's output and pick the same
  template.
- **A fine-tuned checkpoint reasons with the prompt it was trained on**
  (:meth:`PredictConfig.for_model`) unless a template is given.

The option types (:data:`~icl_toolkit.retrieval.config.Strategy`,
:data:`~icl_toolkit.prompting.config.Demos`, ...) are defined once, in the config of
the concern they belong to; the command line's flags are generated from these
configs' fields (:mod:`icl_toolkit.cli._flags`).
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from icl_toolkit.core.errors import ConfigError
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.retrieval.config import RetrievalConfig

__all__ = ["PredictConfig", "OPTION_NAMES", "SECTIONS"]

SECTIONS: dict[str, type[BaseModel]] = {"retrieval": RetrievalConfig, "prompt": PromptConfig}
"""The sections of a prediction spec and the validated model of each."""

OPTION_NAMES: tuple[str, ...] = tuple(sorted({*RetrievalConfig.model_fields, *PromptConfig.model_fields, "threshold"}))
"""Every flat option name a front end may set."""


class PredictConfig(BaseModel):
    """Everything that decides a prediction besides the model and the data (validated, unknown fields rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    """How demonstrations are chosen (:class:`~icl_toolkit.retrieval.config.RetrievalConfig`)."""
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    """How prompts are laid out and packed (:class:`~icl_toolkit.prompting.config.PromptConfig`)."""
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Predicted label is 1 when P(yes) >= threshold."""

    @model_validator(mode="wrap")
    @classmethod
    def _zero_shot(cls, data: Any, handler: Any) -> PredictConfig:
        config = handler(data)
        if (config.retrieval.k == 0) != (config.prompt.demos == "none"):
            config = handler(
                {
                    "retrieval": config.retrieval.model_copy(update={"k": 0}),
                    "prompt": config.prompt.model_copy(update={"demos": "none"}),
                    "threshold": config.threshold,
                }
            )
        return config

    @property
    def uses_demos(self) -> bool:
        """Whether prompts show demonstrations (``k > 0`` and ``demos != "none"``, which always agree)."""
        return self.retrieval.k > 0

    @classmethod
    def from_options(cls, base: PredictConfig | None = None, **options: Any) -> PredictConfig:
        """A config from flat option names (see the module docstring), on top of ``base`` (default: the defaults).

        A ``task`` with a horizon of its own sets ``horizon_years`` when that is left at its default.

        Raises:
            ConfigError: an option name that no section has (with the closest known names); a ``horizon_years``
                other than the ``task``'s own.
            pydantic.ValidationError: a value out of range or of the wrong type; its location ends in the option's
                name, for the caller to name the flag, key or field it came from.
        """
        if options.get("task") is not None:  # the task's own horizon replaces the default one (or refuses another)
            from icl_toolkit.data.task import DEFAULT_HORIZON, Task, task_horizon

            task = Task.model_validate(options["task"])
            given = options.get("horizon_years", base.prompt.horizon_years if base is not None else DEFAULT_HORIZON)
            options = options | {"horizon_years": task_horizon(task, given)}
        sections: dict[str, dict[str, Any]] = {
            name: (getattr(base, name).model_dump() if base is not None else {}) for name in SECTIONS
        }
        top: dict[str, Any] = {"threshold": base.threshold} if base is not None else {}
        for key, value in options.items():
            owners = [name for name, model in SECTIONS.items() if key in model.model_fields]
            if not owners and key not in cls.model_fields:
                close = difflib.get_close_matches(key, OPTION_NAMES, n=2)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ConfigError(f"Unknown prediction option {key!r}.{hint} Known: {', '.join(OPTION_NAMES)}.")
            for name in owners:
                sections[name][key] = value
            if not owners:
                top[key] = value
        return cls.model_validate({**sections, **top})

    def options(self) -> dict[str, Any]:
        """The flat options of this config (the inverse of :meth:`from_options`)."""
        return {**self.retrieval.model_dump(), **self.prompt.model_dump(), "threshold": self.threshold}

    def for_model(self, model: str) -> PredictConfig:
        """This config for ``model``: a checkpoint from ``icl finetune`` asked to reason without demonstrations
        gets the prompt it was trained on, unless a template is set.

        Raises:
            ConfigError: a checkpoint fine-tuned for another task than this config's."""
        from icl_toolkit.core.models import checkpoint_meta, trained_template
        from icl_toolkit.data.task import check_same_task, recorded_task

        meta = checkpoint_meta(model)
        if meta is not None:  # a fine-tuned checkpoint learned one task's answer line
            check_same_task(
                recorded_task(meta.get("prompt")), self.prompt.task.name, f"checkpoint {model}", "the cohort"
            )
        if self.prompt.template is not None:
            return self
        template = trained_template(meta, self.prompt.mode, self.prompt.demos)
        if template is None:
            return self
        return self.model_copy(update={"prompt": self.prompt.model_copy(update={"template": template})})
