"""Teacher-written rationales for cohorts that come without them, with a grounding check.

A teacher model (any backend) reads a labelled patient's history before the
index date and its **known** outcome, and explains the outcome: a free-text
paragraph and a step-by-step version (templates ``prompts/teacher_system.j2``
and ``prompts/teacher_rationale.j2``). Every rationale then goes through
:func:`icl_toolkit.rationales.grounding.check_grounding`: codes, drugs, values and dates it
cites must be in the history. The raw generations and their grounding are kept
(``<out>.generations.jsonl``, resumable); the cohort written carries the
rationales, without the ungrounded ones when asked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from icl_toolkit.backends import Backend, GenerationParams
from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.core.progress import progress_bar
from icl_toolkit.data.cohort import Patient, Rationales
from icl_toolkit.data.serialize import serialize_history, sex_word, token_counter
from icl_toolkit.inference.ray import RayOptions
from icl_toolkit.prompting.templates import TaskWords, chat_prompt, load_templates
from icl_toolkit.rationales.config import TeacherConfig
from icl_toolkit.rationales.grounding import check_grounding

__all__ = [
    "TeacherRecord",
    "RationaleTeacher",
    "GroundingSummary",
    "apply_rationales",
    "generate_rationales_file",
    "RationaleRun",
]

SYSTEM_TEMPLATE = "teacher_system"
USER_TEMPLATE = "teacher_rationale"
_LEAD = re.compile(r"^(?:reasoning|rationale|explanation)\s*:\s*", re.IGNORECASE)


@dataclass
class TeacherRecord:
    """One patient's generations and their grounding, as kept in ``<out>.generations.jsonl``."""

    patient_id: str
    texts: dict[str, str]
    grounding: dict[str, dict[str, Any]]  # style -> {"claims": n, "ungrounded": [{"kind", "text"}]}

    def to_dict(self) -> dict[str, Any]:
        return {"patient_id": self.patient_id, "texts": self.texts, "grounding": self.grounding}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherRecord:
        texts, grounding = d.get("texts"), d.get("grounding")
        if not isinstance(texts, dict) or not isinstance(grounding, dict) or set(texts) != set(grounding):
            raise ConfigError(
                f"the teacher generations record of patient {d.get('patient_id')!r} lacks its texts "
                "or their grounding; start the generations again with --overwrite."
            )
        return cls(d["patient_id"], texts, grounding)


def _clean(text: str) -> str:
    return _LEAD.sub("", text.strip()).strip()


class RationaleTeacher:
    """Writes rationales for labelled patients with a backend.

    Args:
        backend: the teacher model (``generate`` is used).
        config: styles, lengths, history budget.
    """

    def __init__(self, backend: Backend, config: TeacherConfig | None = None) -> None:
        self.backend = backend
        self.config = config or TeacherConfig()
        (self._system, self._user), self.templates_hash = load_templates(SYSTEM_TEMPLATE, USER_TEMPLATE)
        self._count = token_counter(backend.tokenizer)

    def prompt(self, patient: Patient, style: str) -> str:
        """The teacher's prompt for one patient and style (the patient must be labelled)."""
        if patient.label is None:
            raise ConfigError(f"patient {patient.patient_id} has no label: a teacher explains a known outcome")
        c = self.config
        history = serialize_history(patient, max_tokens=c.history_tokens, counter=self._count).text
        variables = {
            "history": history,
            "label": patient.label,
            "horizon_years": f"{c.horizon_years:g}",
            "task": TaskWords(c.task, f"{c.horizon_years:g}"),
            "style": style,
            "age": int(patient.age_at_index),
            "sex": sex_word(patient.sex),
        }
        system = self._system.render(**variables).strip()
        user = self._user.render(**variables).strip()
        return chat_prompt(self.backend.tokenizer, system, user)

    def provenance(self) -> dict[str, Any]:
        return {
            "teacher_model": self.backend.model_id,
            "teacher_config": self.config.model_dump(mode="json"),
            "templates_hash": self.templates_hash,
            "task": self.config.task.name,
        }

    def generate(self, patients: Sequence[Patient]) -> list[TeacherRecord]:
        """Rationales for ``patients`` in one batched backend call, with their grounding."""
        c = self.config
        jobs = [(p, s) for p in patients for s in c.styles]
        params = GenerationParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, seed=c.seed)
        texts = self.backend.generate([self.prompt(p, s) for p, s in jobs], params) if jobs else []
        records: dict[str, TeacherRecord] = {p.patient_id: TeacherRecord(p.patient_id, {}, {}) for p in patients}
        for (p, style), text in zip(jobs, texts):
            text = _clean(text)
            report = check_grounding(text, p)
            rec = records[p.patient_id]
            rec.texts[style] = text
            rec.grounding[style] = {
                "claims": len(report.claims),
                "ungrounded": [{"kind": x.kind, "text": x.text} for x in report.ungrounded],
            }
        return [records[p.patient_id] for p in patients]

    def iter_generate(self, patients: Sequence[Patient], chunk_size: int = 8) -> Iterator[list[TeacherRecord]]:
        """:meth:`generate` chunk by chunk, so that callers can save and report as they go."""
        for start in range(0, len(patients), chunk_size):
            yield self.generate(patients[start : start + chunk_size])


@dataclass
class GroundingSummary:
    """Grounding over all rationales of one style."""

    rationales: int = 0
    empty: int = 0
    claims: int = 0
    ungrounded_claims: int = 0
    fully_grounded: int = 0
    dropped: int = 0
    ungrounded_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def grounded_fraction(self) -> float | None:
        """Share of checkable claims that are in the history (None when there were none)."""
        return 1.0 - self.ungrounded_claims / self.claims if self.claims else None


def apply_rationales(
    patients: Sequence[Patient],
    records: Sequence[TeacherRecord],
    *,
    drop_ungrounded: bool = False,
    min_grounded: float = 1.0,
) -> tuple[list[Patient], dict[str, GroundingSummary]]:
    """Patients with the teacher's rationales set, and the grounding summary per style.

    A rationale is dropped (left out of the patient's record) when it is empty,
    or, with ``drop_ungrounded``, when the share of its claims found in the
    history is below ``min_grounded`` (1.0: every claim must be grounded).
    Patients without a record are returned unchanged, and rationales of styles the
    teacher did not write are kept as they were. Each patient's metadata
    gets ``rationale_grounding`` (claims and ungrounded claims per style).
    """
    by_id = {r.patient_id: r for r in records}
    summary: dict[str, GroundingSummary] = {}
    out: list[Patient] = []
    for p in patients:
        rec = by_id.get(p.patient_id)
        if rec is None:
            out.append(p)
            continue
        old = p.rationales
        kept: dict[str, str | None] = {
            "free_text": old.free_text if old else None,
            "stepwise": old.stepwise if old else None,
        }
        for style, text in rec.texts.items():
            kept[style] = None  # the teacher's version replaces the record's, or nothing does
            g = rec.grounding[style]
            s = summary.setdefault(style, GroundingSummary())
            s.rationales += 1
            n_bad = len(g["ungrounded"])
            s.claims += g["claims"]
            s.ungrounded_claims += n_bad
            for claim in g["ungrounded"]:
                s.ungrounded_by_kind[claim["kind"]] = s.ungrounded_by_kind.get(claim["kind"], 0) + 1
            if not n_bad:
                s.fully_grounded += 1
            if not text:
                s.empty += 1
                continue
            fraction = 1.0 - n_bad / g["claims"] if g["claims"] else 1.0
            if drop_ungrounded and fraction < min_grounded:
                s.dropped += 1
                continue
            kept[style] = text
        rationales = Rationales(**kept) if any(kept.values()) else None
        meta = dict(p.metadata)
        meta["rationale_grounding"] = rec.grounding
        out.append(replace(p, rationales=rationales, metadata=meta))
    return out, summary


@dataclass
class RationaleRun:
    """What :func:`generate_rationales_file` did."""

    patients: list[Patient]  # the cohort written (with rationales where kept)
    records: list[TeacherRecord]  # every generation, with its grounding
    summary: dict[str, GroundingSummary]  # per style
    labelled: int  # patients the teacher explained (the rest have no label)
    generations: Path  # <out>.generations.jsonl (or, on Ray, the shard folder)
    failed: list[dict[str, Any]] = field(default_factory=list)  # on Ray: records that failed, with the reason


def _teacher_worker(
    model: str, engine: dict[str, Any], config: dict[str, Any]
) -> Callable[[list[Patient]], list[dict[str, Any]]]:
    """A Ray replica's teacher (:func:`icl_toolkit.inference.ray.run_on_ray`): the model loaded once; per batch, the
    labelled patients' generations, and ``{"patient_id", "skipped"}`` for the unlabelled (as the single-process
    run explains labelled patients only)."""
    from icl_toolkit.backends.options import EngineOptions, open_backend

    teacher = RationaleTeacher(
        open_backend(model, EngineOptions(**engine), progress=False), TeacherConfig.model_validate(config)
    )

    def work(patients: list[Patient]) -> list[dict[str, Any]]:
        labelled = [p for p in patients if p.label is not None]
        out = [r.to_dict() for r in teacher.generate(labelled)] if labelled else []
        return out + [
            {"patient_id": p.patient_id, "skipped": "no label: a teacher explains known outcomes"}
            for p in patients
            if p.label is None
        ]

    return work


def generate_rationales_file(
    cohort: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: TeacherConfig | None = None,
    *,
    model: str = "default",
    engine: EngineOptions | None = None,
    drop_ungrounded: bool = False,
    min_grounded: float = 1.0,
    chunk_size: int = 8,
    limit: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ray: RayOptions | None = None,
    progress: bool = True,
    on_resume: Callable[[int, int], None] | None = None,
) -> RationaleRun:
    """A teacher explains each labelled patient of a cohort file, in this process or on Ray Data replicas
    (``icl rationales generate`` as a function). The raw generations go to ``<out>.generations.jsonl`` through the
    run loop (on Ray: the shard folder ``<out>.generations/``), resumable; then the cohort with the (grounded)
    rationales is written to ``out``, the same records for the same settings either way.

    Args:
        cohort: a labelled cohort file.
        out: the cohort file to write (replaced at the end).
        config: styles, lengths, history budget (default :class:`TeacherConfig` ()).
        model: the teacher (``"default"``: the embedded SmolLM2-135M-Instruct; a folder; a cached hub name).
        engine: the backend and its settings.
        drop_ungrounded: leave out rationales whose grounded share of claims is below ``min_grounded``.
        min_grounded: with ``drop_ungrounded``: the share of claims that must be in the history.
        chunk_size: patients per batched generation call and per save (on Ray: per replica call).
        limit: only the first N patients (the output holds only them).
        resume: continue an interrupted run from its generations.
        overwrite: start again, replacing earlier generations.
        ray: run on Ray Data replicas with these options (``None``: in this process).
        progress: show a progress bar.
        on_resume: called with (generations done before, patients to go) when resuming.

    Returns:
        What was written (:class:`RationaleRun`).

    Raises:
        ConfigError: no labelled patient, an output that breaks the output rules, a resume with other settings.
    """
    from icl_toolkit.backends.options import EngineOptions, open_backend
    from icl_toolkit.core.models import lm_id
    from icl_toolkit.data.cohort import content_hash, read_cohort, write_cohort
    from icl_toolkit.data.task import copy_cohort_task, read_cohort_task
    from icl_toolkit.inference.output import OutputFile, ShardedOutput, check_output
    from icl_toolkit.inference.ray import RaySource, require_ray, run_on_ray
    from icl_toolkit.inference.run import run_resumable

    config = (config or TeacherConfig()).for_task(read_cohort_task(cohort))  # the teacher explains the cohort's task
    engine = engine or EngineOptions()
    out = Path(out)
    inputs = {"--cohort": cohort}
    check_output(out, overwrite=True, kind="cohort", inputs=inputs)  # the cohort file is replaced at the end
    failed: list[dict[str, Any]] = []
    if ray is not None:
        require_ray()
        source = RaySource(Path(cohort))
        generations = out.with_name(out.name + ".generations")
        provenance = {
            "teacher_model": lm_id(model),
            "engine": engine.model_dump(mode="json"),
            "teacher_config": config.model_dump(mode="json"),
            "templates_hash": load_templates(SYSTEM_TEMPLATE, USER_TEMPLATE)[1],
            "task": config.task.name,
            "cohort_file": str(Path(cohort).resolve()),
        }
        sharded = ShardedOutput(
            generations, provenance, resume=resume, overwrite=overwrite, kind="teacher generations", inputs=inputs
        )
        replicas = f"{ray.replicas} replica{'s' if ray.replicas > 1 else ''}"
        with progress_bar(f"writing rationales on Ray ({replicas})", source.count(limit), progress) as advance:
            run_on_ray(
                source,
                sharded,
                _teacher_worker,
                {"model": model, "engine": engine.model_dump(), "config": config.model_dump(mode="json")},
                ray,
                limit=limit,
                on_resume=on_resume,
                advance=advance,
            )
        patients = read_cohort(cohort)
        if limit:
            patients = patients[:limit]
        raw = sharded.records()
        failed = [r for r in raw if "error" in r]
        records = [TeacherRecord.from_dict(r) for r in raw if "texts" in r]
        labelled = sum(1 for p in patients if p.label is not None)
    else:
        generations = out.with_name(out.name + ".generations.jsonl")
        check_output(generations, resume=resume, overwrite=overwrite, kind="teacher generations", inputs=inputs)
        patients = read_cohort(cohort)
        cohort_hash = content_hash(patients)  # of the whole file, so that a run with --limit resumes without it
        if limit:
            patients = patients[:limit]
        todo = [p for p in patients if p.label is not None]
        if not todo:
            raise ConfigError(f"{cohort}: no patient has a label; a teacher explains known outcomes.")
        lm = open_backend(model, engine, progress=progress)
        teacher = RationaleTeacher(lm, config)
        output = OutputFile(
            generations,
            teacher.provenance() | {"cohort": cohort_hash},
            resume=resume,
            overwrite=overwrite,
            kind="teacher generations",
            inputs=inputs,
        )
        lm.progress = False
        run_resumable(
            todo,
            teacher.generate,
            output,
            chunk_size=chunk_size,
            progress=progress,
            desc=f"writing rationales ({lm.model_id})",
            on_resume=on_resume,
        )
        records = [TeacherRecord.from_dict(r) for r in output.records()]
        labelled = len(todo)
    result, summary = apply_rationales(patients, records, drop_ungrounded=drop_ungrounded, min_grounded=min_grounded)
    write_cohort(result, out)
    copy_cohort_task(cohort, out)
    return RationaleRun(result, records, summary, labelled, generations, failed)
