"""``icl rationales``: teacher-written rationales for a labelled cohort, with a grounding check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from icl_toolkit.cli._common import (
    ModelOpt,
    console,
    err_console,
    flag_error,
    progress_bar,
    with_engine_flags,
)
from icl_toolkit.backends.options import EngineOptions

app = typer.Typer(help="Teacher-written rationales for cohorts without them.", no_args_is_help=True)


@app.command()
@with_engine_flags
def generate(
    cohort: Annotated[Path, typer.Option(help="Labelled cohort JSONL (e.g. from `icl data from-omop`).")],
    out: Annotated[Path, typer.Option(help="Output cohort JSONL with rationales; the raw generations go to <out>.generations.jsonl.")],
    model: ModelOpt = "default",
    styles: Annotated[str, typer.Option(help="Comma-separated: free_text, stepwise.")] = "free_text,stepwise",
    max_new_tokens: Annotated[int, typer.Option(help="Longest rationale in tokens.")] = 200,
    temperature: Annotated[float, typer.Option(help="0: greedy (reproducible).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed (with --temperature > 0).")] = 0,
    history_tokens: Annotated[int, typer.Option(help="History budget shown to the teacher (tokens).")] = 700,
    horizon_years: Annotated[float, typer.Option(help="Outcome window of the cohort's labels, in years.")] = 5.0,
    drop_ungrounded: Annotated[bool, typer.Option(help="Leave out rationales whose grounded share of claims is below --min-grounded.")] = False,
    min_grounded: Annotated[float, typer.Option(min=0.0, max=1.0, help="With --drop-ungrounded: the share of claims that must be in the history.")] = 1.0,
    chunk_size: Annotated[int, typer.Option(min=1, help="Patients per batched generation call (and per save).")] = 8,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N patients (the output holds only them).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run (reuses <out>.generations.jsonl).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start again, replacing earlier generations.")] = False,
    run_engine: Annotated[Literal["local", "ray"], typer.Option("--engine", help="local: this process; ray: Ray Data replicas (the generations go to the shard folder <out>.generations/; needs icl-toolkit[ray]).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="ray: 'auto' joins the cluster this machine is in; default: a local Ray instance.")] = None,
    replicas: Annotated[int, typer.Option(min=1, help="ray: teacher replicas generating at once.")] = 1,
    gpus_per_replica: Annotated[float, typer.Option(min=0.0, help="ray: GPUs per replica (0: CPU).")] = 0.0,
    cpus_per_replica: Annotated[float, typer.Option(min=0.01, help="ray: CPUs per replica.")] = 1.0,
    shard_size: Annotated[int, typer.Option(min=1, help="ray: records per generations shard.")] = 256,
    *,
    engine: EngineOptions,
) -> None:
    """Have a teacher model explain each patient's known outcome, check the rationales' grounding, write the cohort."""
    from pydantic import ValidationError

    from icl_toolkit.rationales.teacher import TeacherConfig, generate_rationales_file

    try:
        config = TeacherConfig(styles=tuple(s.strip() for s in styles.split(",") if s.strip()),
                               max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                               history_tokens=history_tokens, horizon_years=horizon_years)
    except ValidationError as exc:
        raise flag_error(exc) from None
    start = time.perf_counter()
    resumed = lambda n, todo: err_console.print(f"resuming {out}.generations: {n} done, {todo} to go",  # noqa: E731
                                                highlight=False)
    if run_engine == "ray":
        from icl_toolkit.scale.ray_run import RayOptions, count_records, generate_rationales_ray

        options = RayOptions(address=ray_address, replicas=replicas, gpus_per_replica=gpus_per_replica,
                             cpus_per_replica=cpus_per_replica, batch_size=chunk_size, shard_size=shard_size)
        total = count_records(cohort, limit=limit) if cohort.is_file() else None
        with progress_bar(f"writing rationales on Ray ({replicas} replica{'s' if replicas > 1 else ''})",
                          total or 0) as advance:
            done = generate_rationales_ray(cohort, out, config, model=model, engine=engine, options=options,
                                           drop_ungrounded=drop_ungrounded, min_grounded=min_grounded, limit=limit,
                                           resume=resume, overwrite=overwrite, on_resume=resumed, advance=advance,
                                           total=total)
        for r in done.failed[:5]:
            err_console.print(f"failed: {r['patient_id']}: {r['error']}", highlight=False, markup=False)
        if done.failed:
            err_console.print(f"{len(done.failed)} patients failed (their records in {done.generations} say why)",
                              highlight=False)
    else:
        done = generate_rationales_file(
            cohort, out, config, model=model, engine=engine, drop_ungrounded=drop_ungrounded,
            min_grounded=min_grounded, chunk_size=chunk_size, limit=limit, resume=resume, overwrite=overwrite,
            on_resume=resumed)
    records, summary, result = done.records, done.summary, done.patients
    console.print(f"grounding of {len(records)} patients' rationales (claims: codes, drugs, values, dates):",
                  highlight=False)
    for style, s in summary.items():
        frac = "no checkable claims" if s.grounded_fraction is None else f"grounded share {s.grounded_fraction:.1%}"
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s.ungrounded_by_kind.items())) or "none"
        console.print(f"  {style}: {s.rationales} rationales, {s.claims} claims, {frac}; "
                      f"{s.fully_grounded}/{s.rationales} fully grounded; ungrounded claims by kind: {kinds}; "
                      f"left out: {s.dropped} below --min-grounded, {s.empty} empty", highlight=False)
    n_with = sum(1 for p in result if p.rationales is not None)
    skipped = len(result) - done.labelled
    console.print(f"wrote {len(result)} patients ({n_with} with rationales"
                  + (f", {skipped} unlabelled left without" if skipped else "")
                  + f") to {out} in {time.perf_counter() - start:.1f}s; generations in {done.generations}", highlight=False)
    example = next((r for r in records if any(r.texts.values())), None)
    if example is not None:
        style = next(s for s in config.styles if example.texts.get(s))
        console.print(f"patient {example.patient_id} ({style}): {example.texts[style]}", highlight=False)
