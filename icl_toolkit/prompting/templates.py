"""The prompt templates: where they are, how they load (sandboxed Jinja, strict undefined variables), their hash.

The shipped templates live in the repository's top-level ``prompts/`` folder and ship in the wheel as
``icl_toolkit/prompts`` (package data); ``$ICL_PROMPTS`` names a folder searched first, file by file. Their
variables are documented in ``prompts/README.md``.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

from icl_toolkit.core.artifacts import text_hash
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.task import Task

__all__ = [
    "TEMPLATES",
    "REASON_TEMPLATE",
    "SYSTEM_TEMPLATE",
    "ANSWER_TEMPLATE",
    "prompts_dir",
    "user_prompts_dir",
    "load_templates",
    "chat_prompt",
    "TaskWords",
    "current_templates_hash",
]

TEMPLATES = {"none": "zero_shot", "rationale": "few_shot_rationale", "label": "few_shot_label"}
REASON_TEMPLATE = "reason_first"
SYSTEM_TEMPLATE = "system"
ANSWER_TEMPLATE = "answer"


class TaskWords:
    """A task's words as every template receives them in ``task``: ``{{ task }}`` is the question, and
    ``{{ task.answer }}``, ``{{ task.outcome }}``, ... the task's other texts (:class:`~icl_toolkit.data.task.Task`),
    with ``{years}`` replaced by the horizon."""

    def __init__(self, task: Task, years: str) -> None:
        self.__dict__.update(task.words(years))
        self.horizon = years  # the horizon as templates show it ("5")

    name: str
    question: str
    answer: str
    outcome: str

    def __str__(self) -> str:
        return self.question


LEGACY_TEMPLATE_HASHES: dict[str, tuple[str, ...]] = {
    "sha256:dc5646986db221b3": (SYSTEM_TEMPLATE, "zero_shot", ANSWER_TEMPLATE),
    "sha256:50bba51506196dac": (SYSTEM_TEMPLATE, "few_shot_rationale", ANSWER_TEMPLATE),
    "sha256:a84c65951a1793a3": (SYSTEM_TEMPLATE, "few_shot_label", ANSWER_TEMPLATE),
    "sha256:9d327a9d412694b6": (SYSTEM_TEMPLATE, REASON_TEMPLATE, ANSWER_TEMPLATE),
    "sha256:ac81f62f785ac699": ("teacher_system", "teacher_rationale"),
}
"""The hashes of the shipped templates before they read the task's words, and the templates they became."""


def current_templates_hash(recorded: str) -> str:
    """A templates hash recorded by a file made before templates read the task's words, as the hash of the same
    shipped templates now (they render the same prompts for the default task, the only task then; a test checks
    this byte for byte); any other hash as it is."""
    names = LEGACY_TEMPLATE_HASHES.get(recorded)
    return load_templates(*names)[1] if names else recorded


def prompts_dir() -> Path:
    """The folder of the shipped templates: ``icl_toolkit/prompts`` in an installed wheel (package data, mapped
    from the repository's top-level ``prompts/``), or that top-level ``prompts/`` folder itself in a source
    checkout or an editable install."""
    installed = importlib.resources.files("icl_toolkit") / "prompts"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "prompts"


def user_prompts_dir() -> Path | None:
    """``$ICL_PROMPTS``: a folder of templates searched before the shipped ones (a file there overrides the
    shipped file of the same name; the rest still come from the package)."""
    env = os.environ.get("ICL_PROMPTS")
    return Path(env).expanduser() if env else None


def load_templates(*names: str, extra_dir: str | Path | None = None) -> tuple[list[Any], str]:
    """Templates ``NAME.j2`` in the sandboxed environment: from ``extra_dir``, then ``$ICL_PROMPTS``, then the
    templates shipped in the package (read through :mod:`importlib.resources`, so an installed wheel has them).

    Returns:
        The templates, in the order asked, and a hash of their sources.

    Raises:
        ConfigError: a template is not there (the message lists the ones that are), or it is not valid Jinja.
    """
    from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateNotFound
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    folders = [str(f) for f in (extra_dir, user_prompts_dir()) if f is not None]
    loader = ChoiceLoader([FileSystemLoader(folders), FileSystemLoader(str(prompts_dir()))])
    env = ImmutableSandboxedEnvironment(
        loader=loader,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
    try:
        templates = [env.get_template(f"{n}.j2") for n in names]
    except TemplateNotFound as exc:
        known = sorted(t[:-3] for t in env.list_templates(extensions=["j2"]))
        raise ConfigError(
            f"Prompt template {exc.name!r} not found in {', '.join([*folders, 'the package'])}. "
            f"Templates there: {', '.join(known) or 'none'} (or give a path to a .j2 file)."
        ) from None
    except TemplateSyntaxError as exc:
        raise ConfigError(f"{exc.filename or exc.name}:{exc.lineno}: not a valid template: {exc.message}.") from None
    sources = [loader.get_source(env, str(t.name))[0] for t in templates]
    return templates, text_hash("\0".join(sources))


def chat_prompt(tokenizer: Any, system: str, user: str) -> str:
    """A system and a user message as the model expects them: through its chat template with the generation
    prompt added, or ``system + blank line + user + newline`` for a model without one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{user}\n"
