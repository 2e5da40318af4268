"""Which binary task a cohort answers: its name, the question in plain words, the outcome words, the horizon.

Every prompt template (system, zero-shot, few-shot, answer, reason, teacher) reads the task's words instead of
naming a disease, so the same templates serve any binary task a user defines on MEDS or OMOP data. The default,
:data:`ADRD`, is the toolkit's first task (five-year onset of Alzheimer's disease and related dementias); its
prompts are byte for byte those of the releases before tasks existed.

A task file is small TOML, JSON or YAML; a name and a question are enough::

    name = "in_hospital_mortality"
    question = "Will this patient die before leaving the hospital?"

The other fields have defaults worded from the question (see :class:`Task`). A YAML file may be an ACES task
configuration with a ``question`` line added: its ACES keys (``predicates``, ``trigger``, ``windows``, ...) are
not read, and its name defaults to the file's stem. Text fields may say ``{years}``, replaced by the horizon
(``--horizon-years``) when a prompt is rendered.

Importers (``icl data synth``, ``from-omop``, ``from-meds``) store the task beside the cohort file as
``<cohort>.task.json`` (:func:`write_cohort_task`); every command that reads a cohort reads it back
(:func:`read_cohort_task`; a cohort without one answers the default task). ``icl data split`` copies it to each
split. Indexes, retrieval caches, predictions, checkpoints and model cards record the task's name, and combining
artefacts of two tasks is refused by name (:func:`check_same_task`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from icl_toolkit.core.errors import ConfigError

__all__ = [
    "Task",
    "ADRD",
    "load_task",
    "task_file",
    "write_cohort_task",
    "read_cohort_task",
    "copy_cohort_task",
    "check_same_task",
    "TASK_FIELDS_HELP",
    "WithTask",
    "recorded_task",
    "task_horizon",
    "cohorts_task",
    "DEFAULT_HORIZON",
]

TASK_FIELDS_HELP = (
    "A task file has name and question (required), and optionally answer, outcome, known_outcome, positive, "
    "negative, expert, steps, expected, not_expected and horizon_years; text may say {years}."
)


class Task(BaseModel):
    """A binary prediction task, in the words the prompts use (validated; unknown fields rejected).

    Only ``name`` and ``question`` are required; each other text has a default worded from the question.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field(min_length=1, pattern=r"^\S+$")
    """The task's identifier (the ACES task name, e.g. ``in_hospital_mortality``); no spaces."""
    question: str = Field(min_length=1)
    """The question a prediction answers, in plain words (the last line of every prediction prompt)."""
    answer: str = ""
    """The words before the Yes/No answer, ending every demonstration and opening the answer slot (``ADRD within
    {years} years``); default ``Outcome``."""
    outcome: str = ""
    """What the system message says the model judges, as a clause after "whether" (default: "the answer to this
    question is Yes: QUESTION")."""
    known_outcome: str = ""
    """The teacher's description of the outcome to explain, in parentheses after "known outcome" (default: "the
    answer to: QUESTION")."""
    positive: str = ""
    """The teacher's statement of a positive outcome (default: "the answer to QUESTION was Yes")."""
    negative: str = ""
    """The teacher's statement of a negative outcome (default: "the answer to QUESTION was No")."""
    expert: str = "an experienced clinician"
    """Who the teacher writes as."""
    steps: str = (
        "1. age and sex; 2. the record's risk factors for the outcome (cite the items); 3. the record's "
        "protective or reassuring findings; 4. other findings that bear on the outcome, if any; 5. how these add up."
    )
    """The numbered steps of a step-by-step teacher rationale."""
    expected: str = "outcome expected"
    """The conclusion of a step-by-step rationale of a positive outcome."""
    not_expected: str = "outcome not expected"
    """The conclusion of a step-by-step rationale of a negative outcome."""
    horizon_years: float | None = Field(None, gt=0)
    """The labels' outcome window in years, when they have one (it becomes the default of ``--horizon-years``)."""

    @model_validator(mode="after")
    def _defaults(self) -> Task:
        q = self.question.strip()
        filled = {
            "answer": "Outcome",
            "outcome": f"the answer to this question is Yes: {q}",
            "known_outcome": f"the answer to: {q}",
            "positive": f'the answer to "{q}" was Yes',
            "negative": f'the answer to "{q}" was No',
        }
        for key, value in filled.items():
            if not getattr(self, key).strip():
                object.__setattr__(self, key, value)
        return self

    def words(self, years: str) -> dict[str, str]:
        """The task's texts with ``{years}`` replaced by ``years`` (what templates receive as ``task.*``)."""
        return {k: v.replace("{years}", years) for k, v in self.model_dump().items() if isinstance(v, str)}


ADRD = Task(
    name="adrd_5y",
    question="Will this patient be diagnosed with Alzheimer's disease or a related dementia within {years} years "
    "after the index date?",
    answer="ADRD within {years} years",
    outcome="the patient will be diagnosed with Alzheimer's disease or a related dementia (ADRD) within {years} "
    "years after that date",
    known_outcome="diagnosis of Alzheimer's disease or a related dementia within {years} years, or not",
    positive="the patient WAS diagnosed with Alzheimer's disease or a related dementia within {years} years after "
    "the index date",
    negative="the patient was NOT diagnosed with Alzheimer's disease or a related dementia within {years} years "
    "after the index date",
    expert="an experienced geriatrician",
    steps="1. age and sex; 2. the record's risk factors for dementia (cite the items); 3. the record's protective "
    "or reassuring findings; 4. cognitive signs, if any; 5. how these add up.",
    expected="ADRD expected",
    not_expected="ADRD not expected",
    horizon_years=5.0,
)
"""The shipped default: onset of Alzheimer's disease or a related dementia within the horizon (five years)."""


def load_task(path: str | os.PathLike[str]) -> Task:
    """A task file (TOML, JSON, or YAML such as an ACES task configuration with a ``question`` line).

    Raises:
        ConfigError: a missing file, bad syntax or a bad field, naming the file and the field.
    """
    from icl_toolkit.core.files import load_settings_file

    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        task: Task = load_settings_file(path, Task, "task file", TASK_FIELDS_HELP)
        return task
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no task file here (file not found).") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with name and question. {TASK_FIELDS_HELP}")
    fields = {k: v for k, v in data.items() if k in Task.model_fields}  # an ACES config's own keys are not ours
    fields.setdefault("name", path.stem)
    if "question" not in fields:
        raise ConfigError(
            f"{path}: question: missing; add a line such as 'question: Will this patient die in hospital?' "
            f"(the ACES task keys are left as they are). {TASK_FIELDS_HELP}"
        )
    try:
        return Task.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}. {TASK_FIELDS_HELP}") from None


def task_file(cohort: str | os.PathLike[str]) -> Path:
    """Where a cohort file's task is stored: ``<cohort>.task.json`` beside it."""
    cohort = Path(cohort)
    return cohort.with_name(cohort.name + ".task.json")


def write_cohort_task(cohort: str | os.PathLike[str], task: Task) -> Path:
    """Store ``task`` beside the cohort file; returns the file written."""
    from icl_toolkit.core.artifacts import write_json_atomic

    path = task_file(cohort)
    write_json_atomic(path, task.model_dump(mode="json"))
    return path


def read_cohort_task(cohort: str | os.PathLike[str]) -> Task:
    """The task a cohort file answers: its ``<cohort>.task.json``, or :data:`ADRD` when it has none.

    Raises:
        ConfigError: a task file that is not valid, naming it and the field.
    """
    path = task_file(cohort)
    return load_task(path) if path.is_file() else ADRD


def copy_cohort_task(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Give ``target`` the task of ``source`` (a split of a cohort answers the cohort's task)."""
    path = task_file(source)
    if path.is_file():
        shutil.copyfile(path, task_file(target))
    else:
        task_file(target).unlink(missing_ok=True)


def check_same_task(a: str, b: str, what_a: str, what_b: str) -> None:
    """Refuse to combine artefacts of two tasks.

    Raises:
        ConfigError: ``"{what_a} answers task A, {what_b} answers task B; ..."``.
    """
    if a != b:
        raise ConfigError(
            f"{what_a} answers task {a!r} but {what_b} answers task {b!r}; the demonstrations, labels and prompts "
            "of one task say nothing about another. Use inputs made for the same task (the task is stored beside "
            "each cohort file as <cohort>.task.json)."
        )


class WithTask(BaseModel):
    """A config that renders prompts for a task (:class:`PromptConfig`, the teacher's and SFT's configs).

    The default task is left out of the config's dump, so files written before tasks existed (every one of
    them for the default task) still match the configs that would make them now.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    task: Task = ADRD
    """The task the prompts ask about (read from the cohort's ``<cohort>.task.json``; default ADRD)."""

    def for_task(self, task: Task) -> Any:
        """This config for ``task``: the task, and its own horizon in place of the default ``horizon_years``
        (a subclass's field).

        Raises:
            ConfigError: ``horizon_years`` set to another value than the task's own.
        """
        horizon = getattr(self, "horizon_years")  # noqa: B009 - every subclass has it; this base does not
        return self.model_copy(update={"task": task, "horizon_years": task_horizon(task, horizon)})

    @model_serializer(mode="wrap")
    def _default_task_left_out(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and self.task == ADRD:
            data.pop("task", None)
        return data


def recorded_task(meta: Any) -> str:
    """The task name an artefact's metadata records (``task``); one written before tasks existed answers the
    default task."""
    name = meta.get("task") if isinstance(meta, dict) else None
    return str(name) if name else ADRD.name


DEFAULT_HORIZON = 5.0
"""The configs' default horizon (``--horizon-years``), which a task's own horizon replaces."""


def task_horizon(task: Task, horizon: float) -> float:
    """The horizon a prediction for ``task`` uses: the task's when it has one and ``horizon`` is the configs'
    default; ``horizon`` otherwise.

    Raises:
        ConfigError: ``horizon`` set to another value than the task's own horizon.
    """
    if task.horizon_years is None or horizon == task.horizon_years:
        return horizon
    if horizon == DEFAULT_HORIZON:
        return task.horizon_years
    raise ConfigError(
        f"--horizon-years {horizon:g}: the cohort's task {task.name!r} has a horizon of {task.horizon_years:g} "
        "years (its labels' window); leave --horizon-years out, or give the task file another horizon_years."
    )


def cohorts_task(files: dict[str, Any], given: Task | None = None, given_what: str = "the task file given") -> Task:
    """The task that cohort files answer (``{what: path}``; each path's ``<path>.task.json``, absent = the
    default task), or the ``given`` task (named ``given_what`` in errors) for files without one.

    Raises:
        ConfigError: two files of different tasks, or a given task that a file contradicts.
    """
    tasks = {what: load_task(task_file(p)) for what, p in files.items() if p is not None and task_file(p).is_file()}
    task = given or next(iter(tasks.values()), ADRD)
    first = given_what if given is not None else next(iter(tasks), "the default task")
    for what, other in tasks.items():
        check_same_task(task.name, other.name, str(first), f"{what} {files[what]}")
    return task
