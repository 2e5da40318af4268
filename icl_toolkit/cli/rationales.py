"""``icl rationales``: teacher-written rationales for a labelled cohort, with a grounding check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.cli._common import ModelOpt, console, err_console, with_engine_flags, with_ray_flags
from icl_toolkit.cli._flags import FlagGroup, with_flags
from icl_toolkit.rationales.config import TeacherConfig

app = typer.Typer(help="Teacher-written rationales for cohorts without them.", no_args_is_help=True)

TEACHER = FlagGroup(
    TeacherConfig, fields=("styles", "max_new_tokens", "temperature", "seed", "history_tokens", "horizon_years")
)
"""The teacher's settings (--styles, --max-new-tokens, --temperature, ...)."""


@app.command()
@with_engine_flags
@with_flags("config", TEACHER)
@with_ray_flags
def generate(
    cohort: Annotated[Path, typer.Option(help="Labelled cohort JSONL (e.g. from `icl data from-omop`).")],
    out: Annotated[
        Path,
        typer.Option(help="Output cohort JSONL with rationales; the raw generations go to <out>.generations.jsonl."),
    ],
    model: ModelOpt = "default",
    drop_ungrounded: Annotated[
        bool, typer.Option(help="Leave out rationales whose grounded share of claims is below --min-grounded.")
    ] = False,
    min_grounded: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="With --drop-ungrounded: the share of claims that must be in the history."),
    ] = 1.0,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Patients per batched generation call (and per save; on Ray per replica call).")
    ] = 8,
    limit: Annotated[
        Optional[int], typer.Option(min=1, help="Only the first N patients (the output holds only them).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run (reuses <out>.generations.jsonl).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start again, replacing earlier generations.")] = False,
    run_engine: Annotated[
        Literal["local", "ray"],
        typer.Option(
            "--engine",
            help="local: this process; ray: Ray Data replicas (the generations go to the shard folder <out>.generations/; needs icl-toolkit\\[ray]).",
        ),
    ] = "local",
    *,
    engine: EngineOptions,
    config: TeacherConfig,
    ray_options: dict[str, Any],
) -> None:
    """Have a teacher model explain each patient's known outcome, check the rationales' grounding, write the cohort."""
    from icl_toolkit.inference.ray import RayOptions
    from icl_toolkit.rationales.teacher import generate_rationales_file

    start = time.perf_counter()
    ray = RayOptions(**ray_options, batch_size=chunk_size) if run_engine == "ray" else None
    done = generate_rationales_file(
        cohort,
        out,
        config,
        model=model,
        engine=engine,
        drop_ungrounded=drop_ungrounded,
        min_grounded=min_grounded,
        chunk_size=chunk_size,
        limit=limit,
        resume=resume,
        overwrite=overwrite,
        ray=ray,
        on_resume=lambda n, todo: err_console.print(
            f"resuming {out}.generations: {n} done, {todo} to go", highlight=False
        ),
    )
    for r in done.failed[:5]:
        err_console.print(f"failed: {r['patient_id']}: {r['error']}", highlight=False, markup=False)
    if done.failed:
        err_console.print(
            f"{len(done.failed)} patients failed (their records in {done.generations} say why)", highlight=False
        )
    records, summary, result = done.records, done.summary, done.patients
    console.print(
        f"grounding of {len(records)} patients' rationales (claims: codes, drugs, values, dates):", highlight=False
    )
    for style, s in summary.items():
        frac = "no checkable claims" if s.grounded_fraction is None else f"grounded share {s.grounded_fraction:.1%}"
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.ungrounded_by_kind.items())) or "none"
        console.print(
            f"  {style}: {s.rationales} rationales, {s.claims} claims, {frac}; "
            f"{s.fully_grounded}/{s.rationales} fully grounded; ungrounded claims by kind: {kinds}; "
            f"left out: {s.dropped} below --min-grounded, {s.empty} empty",
            highlight=False,
        )
    n_with = sum(1 for p in result if p.rationales is not None)
    skipped = len(result) - done.labelled
    console.print(
        f"wrote {len(result)} patients ({n_with} with rationales"
        + (f", {skipped} unlabelled left without" if skipped else "")
        + f") to {out} in {time.perf_counter() - start:.1f}s; generations in {done.generations}",
        highlight=False,
    )
    example = next((r for r in records if any(r.texts.values())), None)
    if example is not None:
        style = next(s for s in config.styles if example.texts.get(s))
        console.print(f"patient {example.patient_id} ({style}): {example.texts[style]}", highlight=False)
