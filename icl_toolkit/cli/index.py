"""``icl index``: build and inspect demonstration indexes."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from icl_toolkit.cli._common import console
from icl_toolkit.cohort import read_cohort

app = typer.Typer(help="Build and inspect faiss indexes of demonstration pools.", no_args_is_help=True)


class IndexKind(str, Enum):
    exact = "exact"
    hnsw = "hnsw"


@app.command()
def build(
    pool: Annotated[Path, typer.Option(help="Demonstration pool (cohort JSONL with labels).")],
    out: Annotated[Path, typer.Option(help="Output folder for index.faiss and index.json.")],
    kind: Annotated[IndexKind, typer.Option(help="exact (flat inner product) or hnsw (approximate, for large pools).")] = IndexKind.exact,
    embedder: Annotated[str, typer.Option(help="'default' (embedded all-MiniLM-L6-v2), a local folder or a cached hub name.")] = "default",
    batch_size: Annotated[int, typer.Option(min=1, help="Profiles per embedding batch.")] = 64,
    hnsw_m: Annotated[int, typer.Option(min=4, help="HNSW graph degree.")] = 32,
    ef_search: Annotated[int, typer.Option(min=8, help="HNSW search breadth (256: recall@8 0.98 at 1M vectors, p99 2.3 ms on 2 cores; see benchmarks).")] = 256,
) -> None:
    """Embed the pool's condensed profiles and save a faiss index with its metadata."""
    from icl_toolkit.retrieve import DemoIndex, ProfileEmbedder

    start = time.perf_counter()
    patients = read_cohort(pool)
    emb = ProfileEmbedder(embedder, batch_size=batch_size)
    index = DemoIndex.build(patients, emb, kind=kind.value, hnsw_m=hnsw_m, ef_search=ef_search)
    index.save(out)
    console.print(f"indexed {len(patients)} patients from {pool} into {out} ({kind.value}, {emb.id}, "
                  f"dim {emb.dim}) in {time.perf_counter() - start:.1f}s", highlight=False)


@app.command()
def info(folder: Annotated[Path, typer.Argument(help="Index folder.")]) -> None:
    """Print an index's metadata."""
    from icl_toolkit.retrieve import DemoIndex

    index = DemoIndex.load(folder)
    console.print_json(json.dumps(index.meta))
