"""Retrieval at scale: index build time, memory, query latency (p50, p99) and recall@8 of the approximate
index against exact search, at pool sizes of 10k, 100k and 1M; plus end-to-end embedding throughput.

    .venv/bin/python benchmarks/retrieval_scale.py            # full run (about 18 min on 2 cores)
    .venv/bin/python benchmarks/retrieval_scale.py --quick    # seconds, for the smoke test

Targets (issue 6) at 1M: recall@8 >= 0.95 and p99 < 5 ms per query on 2 cores.

Vectors: 384-d (the embedder's width), L2-normalised, drawn from a Gaussian
fitted to real profile embeddings (the mean and covariance of the MiniLM
embeddings of ``--real`` synthetic patients), so that the random vectors have
the spread and low intrinsic dimension of real embeddings at any pool size.
Queries are fresh draws, not pool members. Isotropic random vectors, which
have no such structure and are the worst case for any approximate index, are
run at 100k as a reference row.

The indexes are the toolkit's own (``retrieve.faiss_index``, as ``icl index
build --kind``): ``exact`` (flat inner product) and ``hnsw`` (M 32,
efConstruction 80) at several efSearch values; the toolkit's default is 256.
Latency is per single query, as a service sees it: 1,000 queries one at a time,
each timed. Memory is the serialised index size. Real-embedding rows embed
synthetic patients' profiles with the embedded MiniLM (patients/s includes
building the profile text) and measure HNSW recall on those vectors.
Writes retrieval_scale.csv and retrieval_scale.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, machine, write_csv  # noqa: E402

from icl_toolkit.core.progress import progress_bar  # noqa: E402
from icl_toolkit.data.synth import SynthConfig, generate_cohort  # noqa: E402
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.index import faiss_index  # noqa: E402

DIM, K = 384, 8


def fitted(n: int, rng: np.random.Generator, mean: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """``n`` normalised draws from N(mean, chol chol^T), in chunks (bounded memory)."""
    out = np.empty((n, len(mean)), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = (rng.standard_normal((m, len(mean))).astype(np.float32) @ chol.T) + mean
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def isotropic(n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def latencies(index, queries: np.ndarray) -> np.ndarray:
    """Per-query search time in ms, one query at a time."""
    out = np.empty(len(queries))
    for i in range(len(queries)):
        q = queries[i:i + 1]
        t = time.perf_counter()
        index.search(q, K)
        out[i] = (time.perf_counter() - t) * 1000
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def bench_vectors(name: str, pool: np.ndarray, queries: np.ndarray, efs: list[int], where: str,
                  advance) -> list[dict]:
    rows = []
    t = time.perf_counter()
    exact = faiss_index(pool, "exact")
    build = time.perf_counter() - t
    lat = latencies(exact, queries)
    _, truth = exact.search(queries, K)
    rows.append({"data": name, "n": len(pool), "index": "exact", "ef_search": "", "build_s": round(build, 2),
                 "index_mb": round(index_bytes(exact) / 1e6, 1), "p50_ms": round(float(np.percentile(lat, 50)), 3),
                 "p99_ms": round(float(np.percentile(lat, 99)), 3), "recall_at_8": 1.0, "machine": where})
    del exact
    advance(1, f"{name} {len(pool):,} exact")
    t = time.perf_counter()
    hnsw = faiss_index(pool, "hnsw")
    build = time.perf_counter() - t
    size = round(index_bytes(hnsw) / 1e6, 1)
    for ef in efs:
        hnsw.hnsw.efSearch = ef
        lat = latencies(hnsw, queries)
        _, found = hnsw.search(queries, K)
        rows.append({"data": name, "n": len(pool), "index": "hnsw", "ef_search": ef, "build_s": round(build, 2),
                     "index_mb": size, "p50_ms": round(float(np.percentile(lat, 50)), 3),
                     "p99_ms": round(float(np.percentile(lat, 99)), 3),
                     "recall_at_8": round(recall(found, truth), 4), "machine": where})
    advance(1, f"{name} {len(pool):,} hnsw")
    return rows


def embed_real(n: int, where: str) -> tuple[np.ndarray, dict]:
    """Profile embeddings of ``n`` synthetic patients (embedded MiniLM), and the end-to-end throughput."""
    patients = generate_cohort(SynthConfig(n=n, seed=11, rationales=False))
    embedder = ProfileEmbedder()
    embedder.embed(patients[:16], progress=False)  # warm-up
    t = time.perf_counter()
    vecs = embedder.embed(patients, progress=False)
    secs = time.perf_counter() - t
    return vecs, {"n": len(patients), "seconds": round(secs, 2), "patients_per_s": round(len(patients) / secs, 1),
                  "machine": where}


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    mix = [r for r in rows if r["data"].startswith("fitted")]
    for ef in sorted({r["ef_search"] for r in mix if r["index"] == "hnsw"}):
        sub = [r for r in mix if r["ef_search"] == ef]
        axes[0].plot([r["n"] for r in sub], [r["p99_ms"] for r in sub], marker="o", label=f"hnsw ef={ef}")
        axes[1].plot([r["n"] for r in sub], [r["recall_at_8"] for r in sub], marker="o", label=f"hnsw ef={ef}")
    ex = [r for r in mix if r["index"] == "exact"]
    axes[0].plot([r["n"] for r in ex], [r["p99_ms"] for r in ex], marker="s", color="black", label="exact")
    axes[0].axhline(5, color="red", ls=":", label="target p99 < 5 ms")
    axes[1].axhline(0.95, color="red", ls=":", label="target recall@8 >= 0.95")
    axes[0].set(xscale="log", yscale="log", xlabel="pool size", ylabel="p99 ms per query", title="query latency (p99)")
    axes[1].set(xscale="log", xlabel="pool size", ylabel="recall@8 vs exact", title="approximate-index recall")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--ef", default="64,128,256", help="HNSW efSearch values")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--real", type=int, default=10000, help="patients for the real-embedding rows")
    ap.add_argument("--quick", action="store_true", help="2k and 10k vectors, 200 queries, 300 real patients")
    ap.add_argument("--out", type=Path, default=RESULTS / "retrieval_scale.csv")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.queries, args.real = "2000,10000", 200, 300
    sizes = [int(x) for x in args.sizes.split(",")]
    efs = [int(x) for x in args.ef.split(",")]
    where = machine()
    print(f"machine: {where}", flush=True)
    rows: list[dict] = []
    iso_n = min(100_000, max(sizes))
    with progress_bar("benchmarks", 2 * len(sizes) + 5) as advance:
        real, throughput = embed_real(args.real + args.queries, where)
        advance(1, f"embedded {len(real):,} patients")
        rows += bench_vectors("MiniLM profiles", real[:args.real], real[args.real:], efs, where, advance)
        mean = real.mean(axis=0)
        chol = np.linalg.cholesky(np.cov(real, rowvar=False) + 1e-6 * np.eye(DIM)).astype(np.float32)
        rng = np.random.default_rng(0)
        queries = fitted(args.queries, rng, mean, chol)
        for n in sizes:
            rows += bench_vectors("fitted Gaussian", fitted(n, np.random.default_rng(n), mean, chol), queries, efs,
                                  where, advance)
        rows += bench_vectors("isotropic random", isotropic(iso_n, np.random.default_rng(1)),
                              isotropic(args.queries, np.random.default_rng(2)), efs, where, advance)
    write_csv(args.out, rows)
    write_csv(args.out.with_name(args.out.stem + "_embedding.csv"), [throughput])
    _plot(rows, args.out.with_suffix(".png"))
    print(f"{'data':18s} {'n':>9s} {'index':6s} {'ef':>4s} {'build s':>8s} {'MB':>7s} {'p50 ms':>7s} {'p99 ms':>7s} "
          f"{'recall@8':>8s}")
    for r in rows:
        print(f"{r['data']:18s} {r['n']:9,d} {r['index']:6s} {str(r['ef_search']):>4s} {r['build_s']:8.2f} "
              f"{r['index_mb']:7.1f} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['recall_at_8']:8.4f}")
    print(f"embedding: {throughput['n']:,} patients in {throughput['seconds']} s = "
          f"{throughput['patients_per_s']} patients/s (profile text + MiniLM)")
    print(f"wrote {args.out}, {args.out.stem}_embedding.csv and {args.out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
