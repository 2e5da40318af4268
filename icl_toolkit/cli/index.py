"""``icl index``: build, inspect and evaluate demonstration indexes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from icl_toolkit.backends.options import EngineOptions
from icl_toolkit.cli._common import ModelOpt, console, spec_from_flags, with_engine_flags, with_retriever_flags
from icl_toolkit.cli._flags import FlagGroup, flag_error, with_flags
from icl_toolkit.core.errors import ConfigError
from icl_toolkit.data.cohort import content_hash
from icl_toolkit.inference.gain import GainConfig
from icl_toolkit.prompting.config import PromptConfig
from icl_toolkit.retrieval.config import RetrievalConfig
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.index import IndexKind

app = typer.Typer(help="Build, inspect and evaluate faiss indexes of demonstration pools.", no_args_is_help=True)

EmbedderOpt = Annotated[
    str,
    typer.Option(
        help="dense and hybrid: 'default' (embedded all-MiniLM-L6-v2), a local folder, a cached hub name, or 'hash' (a fast bag-of-words stand-in, for tests)."
    ),
]


def _embedder(name: str, retrieval: RetrievalConfig, batch_size: int = 64) -> ProfileEmbedder | None:
    """The profile embedder a retriever needs (None for those that need none); ``hash`` is the fast bag-of-words
    stand-in of the tests."""
    from icl_toolkit.retrieval.representations import needs_embedder

    if not needs_embedder(retrieval.retriever, retrieval.hybrid_weights):
        return None
    if name == "hash":
        from icl_toolkit.retrieval.embedder import HashEmbedder

        return ProfileEmbedder(model=HashEmbedder(), model_id="hash-64")
    return ProfileEmbedder(name, batch_size=batch_size)


@app.command()
@with_retriever_flags
def build(
    pool: Annotated[Path, typer.Option(help="Demonstration pool (cohort JSONL with labels).")],
    out: Annotated[Path, typer.Option(help="Output folder for index.faiss, index.json and retriever.npz.")],
    kind: Annotated[
        IndexKind,
        typer.Option(
            help="exact (flat inner product), hnsw (approximate, for large pools) or auto (exact up to 50,000 patients, hnsw above)."
        ),
    ] = "auto",
    embedder: EmbedderOpt = "default",
    batch_size: Annotated[int, typer.Option(min=1, help="Profiles per embedding batch.")] = 64,
    hnsw_m: Annotated[int, typer.Option(min=4, help="HNSW graph degree.")] = 32,
    ef_search: Annotated[
        int,
        typer.Option(
            min=8, help="HNSW search breadth (256: recall@8 0.98 at 1M vectors, p99 2.3 ms on 2 cores; see benchmarks)."
        ),
    ] = 256,
    *,
    retriever_options: dict[str, Any],
) -> None:
    """Fit the retriever on the pool and save a faiss index with the retriever's state and metadata."""
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.data.task import read_cohort_task
    from icl_toolkit.retrieval.index import DemoIndex
    from icl_toolkit.retrieval.representations import make_representation

    retrieval = spec_from_flags("default", **retriever_options).retrieval
    start = time.perf_counter()
    patients = read_cohort(pool)
    rep = make_representation(retrieval, _embedder(embedder, retrieval, batch_size), patients)
    task = read_cohort_task(pool).name  # a predictor of another task refuses this index
    index = DemoIndex.build(patients, rep, kind=kind, hnsw_m=hnsw_m, ef_search=ef_search, task=task)
    index.save(out)
    console.print(
        f"indexed {len(patients)} patients from {pool} into {out} ({index.meta['kind']}, "
        f"{retrieval.retriever} retriever"
        + (f", {rep.embedder_id}" if rep.embedder_id else "")
        + f", dim {rep.dim}) in "
        f"{time.perf_counter() - start:.1f}s",
        highlight=False,
    )


@app.command()
def info(folder: Annotated[Path, typer.Argument(help="Index folder.")]) -> None:
    """Print an index's metadata (its retriever and settings, pool hash, size, kind)."""
    from icl_toolkit.retrieval.index import DemoIndex

    index = DemoIndex.load(folder)
    console.print_json(json.dumps(index.meta))


@app.command("eval")
@with_retriever_flags
def evaluate(
    pool: Annotated[Path, typer.Option(help="Demonstration pool (cohort JSONL with labels).")],
    cohort: Annotated[
        Path, typer.Option(help="Query patients with labels (validation patients; keep the test split for the end).")
    ],
    retrievers: Annotated[
        str,
        typer.Option(
            "--retrievers",
            help="Comma-separated retrievers to compare, or 'all' (default: all; with --index, its own).",
        ),
    ] = "all",
    ks: Annotated[str, typer.Option("--k", help="Comma-separated neighbour counts.")] = "1,2,4,8,16,64",
    index: Annotated[
        Optional[Path], typer.Option(help="Evaluate this index (built over --pool with the --retriever settings).")
    ] = None,
    embedder: EmbedderOpt = "default",
    bootstrap: Annotated[int, typer.Option(min=10, help="Bootstrap resamples for the 95% intervals.")] = 1000,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N query patients.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for retrieval_report.csv, .json and .png.")] = None,
    *,
    retriever_options: dict[str, Any],
) -> None:
    """How much outcome signal each retriever's neighbours carry: vote AUROC/AUPRC with CIs, purity, similarity,
    latency, against the logistic-regression and age-only AUROC of the same patients."""
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.data.task import cohorts_task
    from icl_toolkit.evaluation.retrieval import evaluate_retrievers, plot_report, verdict
    from icl_toolkit.retrieval.config import RETRIEVERS

    cohorts_task({"--pool": pool, "--cohort": cohort})  # neighbours of another task's pool say nothing here
    try:
        counts = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--k: expected comma-separated whole numbers such as 1,4,16 (got {ks!r}).") from None
    names = list(RETRIEVERS) if retrievers == "all" else [x.strip() for x in retrievers.split(",") if x.strip()]
    if index is not None and retrievers == "all":  # the index's own retriever
        from icl_toolkit.retrieval.index import DemoIndex

        names = [DemoIndex.load(index).meta["retriever"]["kind"]]
    unknown = [n for n in names if n not in RETRIEVERS]
    if unknown or not names:
        raise ConfigError(
            f"--retrievers: unknown {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(RETRIEVERS)} or 'all'."
        )
    base = {key: v for key, v in retriever_options.items() if key != "retriever"}
    configs = [spec_from_flags("default", **base, retriever=n).retrieval for n in names]
    queries = read_cohort(cohort)[:limit] if limit else read_cohort(cohort)
    demo_pool = read_cohort(pool)
    emb = next((e for e in (_embedder(embedder, c) for c in configs) if e is not None), None)
    report = evaluate_retrievers(demo_pool, queries, configs, ks=counts, embedder=emb, index=index, n_boot=bootstrap)

    table = Table(
        title=f"neighbour vote on {report.n_queries} patients of {cohort} ({report.cases} cases), pool {report.n_pool}",
        title_justify="left",
    )
    for col in (
        "retriever",
        "k",
        "vote AUROC (95% CI)",
        "AUPRC",
        "purity",
        "age gap",
        "sex match",
        "code overlap",
        "query ms p50/p99",
    ):
        table.add_column(col, justify="left" if col == "retriever" else "right", no_wrap=col == "retriever")
    for r in report.rows:
        table.add_row(
            r["retriever"],
            str(r["k"]),
            f"{r['auroc']:.3f} ({r['auroc_lo']:.3f}-{r['auroc_hi']:.3f})",
            f"{r['auprc']:.3f}",
            f"{r['purity']:.3f}",
            f"{r['age_gap']:.1f}",
            f"{r['sex_match']:.2f}",
            f"{r['code_overlap']:.3f}",
            f"{r['query_ms_p50']:.2f}/{r['query_ms_p99']:.2f}",
        )
    for ref in report.references:
        short = "logistic regression" if ref["reference"].startswith("logistic") else ref["reference"]
        table.add_row(
            f"[dim]{short}[/]",
            "",
            f"{ref['auroc']:.3f} ({ref['auroc_lo']:.3f}-{ref['auroc_hi']:.3f})",
            f"{ref['auprc']:.3f}",
            "",
            "",
            "",
            "",
            "",
        )
    console.print(table)
    for line in verdict(report, default=RetrievalConfig().retriever):
        console.print(line, highlight=False)
    if out is not None:
        import csv

        out.mkdir(parents=True, exist_ok=True)
        with open(out / "retrieval_report.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(report.rows[0]))
            writer.writeheader()
            writer.writerows(report.rows)
        from icl_toolkit.core.artifacts import write_json_atomic

        write_json_atomic(out / "retrieval_report.json", report.to_dict() | {"pool": str(pool), "queries": str(cohort)})
        plot_report(report, out / "retrieval_report.png")
        console.print(f"wrote {out}/retrieval_report.csv, .json and .png", highlight=False)


@app.command("gain")
@with_engine_flags
@with_flags("gain_options", FlagGroup(GainConfig), build=dict)
@with_flags("prompt_options", FlagGroup(PromptConfig, fields=("rationale", "demo_tokens", "query_tokens")), build=dict)
def gain(
    pool: Annotated[Path, typer.Option(help="Demonstration pool (cohort JSONL with labels) the index was built on.")],
    index: Annotated[Path, typer.Option(help="Index folder from `icl index build`; gain.json is written into it.")],
    model: ModelOpt = "default",
    *,
    engine: EngineOptions,
    gain_options: dict[str, Any],
    prompt_options: dict[str, Any],
) -> None:
    """Measure what each pool patient does for the model as a demonstration (for --strategy gain), on the pool
    alone, cross-fitted so that no patient's score depends on its own label; stored with the index, with the
    model's id (another model refuses it)."""
    from icl_toolkit.backends.options import open_backend
    from icl_toolkit.data.cohort import read_cohort
    from icl_toolkit.data.task import read_cohort_task
    from icl_toolkit.inference.gain import compute_gain
    from icl_toolkit.retrieval.index import DemoIndex

    patients = read_cohort(pool)
    loaded = DemoIndex.load(index)
    if loaded.meta.get("pool_hash") != content_hash(patients):
        raise ConfigError(f"{index}: this index was built on another pool than {pool}; give the pool it was built on.")
    try:
        settings = GainConfig(**gain_options)
    except ValidationError as exc:
        raise flag_error(exc) from None
    prompt = spec_from_flags(model, read_cohort_task(pool), **prompt_options).prompt
    backend = open_backend(model, engine, progress=False)
    scores = compute_gain(backend, patients, prompt, settings)
    scores.save(index)
    m = scores.meta
    console.print(
        f"gain scores of {len(scores.scores)} pool patients for {m['model_id']} ({m['measured']} measured, "
        f"{m['prompts']} prompts, {m['seconds']:.0f}s, {m['seconds_per_prompt']:.3f}s per prompt; cross-fitted "
        f"agreement with the measured gains: Spearman {m['crossfit_spearman']}) -> {index}/gain.json",
        highlight=False,
    )
