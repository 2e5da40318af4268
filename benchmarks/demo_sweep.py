"""How many demonstrations help? AUROC (bootstrap 95% CI), prompt tokens and latency against k.

    .venv/bin/python benchmarks/demo_sweep.py                       # full run (about an hour on 2 cores)
    .venv/bin/python benchmarks/demo_sweep.py --models default,recipe_out/ckpt/label   # + the label-SFT checkpoint
    .venv/bin/python benchmarks/demo_sweep.py --quick --models PATH  # seconds, for the smoke test

The cohort is the one of `make demo` and `make paper` (2,000 synthetic patients,
seed 1, splits 70/10/20): the pool is the train split, the test patients are the
first ``--n`` of the test split. Every configuration scores the same patients.

Axes:

* k in {0, 1, 2, 4, 8, 16}; 16 only for the base model's label-only curve
  with the similar strategy. The context allows more, the clock does not: a
  16-demo prompt with rationales is about 4,600 tokens, 15 s per patient on 2
  cores (k = 8 with rationales is 2,400 tokens, 6 s). A fine-tuned checkpoint
  gets the rationale and label curves (similar) up to k = 8.
* Nested demonstration sets: each patient's demos are retrieved once at the
  largest k, and k uses the first k of that list, so the demos at k are a subset
  of those at k+1. For ``balanced`` the list alternates cases and controls (each
  by similarity), so every prefix is as balanced as it can be.
* Content: ``rationale`` (history + rationale + outcome), ``label`` (history +
  outcome) and ``shuffled`` (label-only demos whose shown outcomes are the pool's
  labels randomly permuted: the control of Min et al. 2022; same demos, wrong
  answers at the pool's base rate).
* Strategy: ``similar``, ``balanced``, and ``random`` with seeds 0, 1, 2
  (label content; the content comparison uses the similar strategy).
* Retriever (``--retrievers``, default ``dense,prognostic``): the curves above
  come from ``dense`` (the MiniLM profile, the original retriever); every other
  retriever gets the two content curves (rationale and label-only, similar), so
  the new default stands beside the old one on the same patients.
* Beside each configuration's AUROC, the AUROC of the vote of the very demos
  it showed (the share of ADRD among them, by their true labels): the model's
  value added over simply counting its demonstrations' outcomes, or its absence.

Prompts use compact budgets (query history 160 tokens, each demo 100) so that
k = 16 fits SmolLM2's context and a run fits an hour on 2 cores. Finished
configurations are kept in the predictions file and skipped on a rerun
(``--fresh`` starts over). Writes demo_sweep.csv (one row per configuration),
demo_sweep_predictions.csv (every probability) and demo_sweep.png.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, demo_cohort, machine, write_csv  # noqa: E402

from icl_toolkit.backends import choice_probabilities  # noqa: E402
from icl_toolkit.backends.options import EngineOptions, open_backend  # noqa: E402
from icl_toolkit.core.progress import progress_bar  # noqa: E402
from icl_toolkit.evaluation.metrics import bootstrap_ci, summary  # noqa: E402
from icl_toolkit.prompting.builder import PromptBuilder
from icl_toolkit.prompting.config import PromptConfig  # noqa: E402
from icl_toolkit.retrieval.config import RetrievalConfig
from icl_toolkit.retrieval.embedder import ProfileEmbedder
from icl_toolkit.retrieval.index import DemoIndex
from icl_toolkit.retrieval.representations import make_representation  # noqa: E402
from icl_toolkit.retrieval.retriever import Retriever  # noqa: E402

QUERY_TOKENS, DEMO_TOKENS = 160, 100


def nested(hits: list, strategy: str) -> list:
    """The retrieval list in the order prefixes are taken (balanced: cases and controls alternate)."""
    if strategy != "balanced":
        return list(hits)
    pos = [h for h in hits if h.label == 1]
    neg = [h for h in hits if h.label != 1]
    out = []
    for i in range(max(len(pos), len(neg))):
        out += [x[i] for x in (pos, neg) if i < len(x)]
    return out


def configurations(quick: bool, base: bool, retriever: str = "dense") -> list[tuple[str, str, int]]:
    """(content, strategy, seed) of every curve (a fine-tuned checkpoint, or a retriever other than dense, gets the
    two content curves)."""
    out = [("rationale", "similar", 0), ("label", "similar", 0)]
    if not base or retriever != "dense":
        return out
    out += [("shuffled", "similar", 0), ("label", "balanced", 0)]
    return out + [("label", "random", s) for s in ((0,) if quick else (0, 1, 2))]


def largest_k(content: str, strategy: str, base: bool, ks: list[int]) -> int:
    """k = 16 costs as much as all smaller k together: only the base model's label-only curve (similar) gets it."""
    return max(ks) if base and strategy == "similar" and content == "label" else max(k for k in ks if k <= 8)


Key = tuple  # (model name, retriever, content, strategy, seed, k)
COLUMNS = ["model", "retriever", "content", "strategy", "seed", "k", "patient_id", "label", "probability",
           "prompt_tokens", "seconds"]


def _upgrade(path: Path) -> None:
    """A predictions file from before the retriever column: its demos came from the dense retriever."""
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if rows and "retriever" in rows[0]:
        return
    for row in rows:
        row["retriever"] = "-" if row["k"] == "0" else "dense"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_predictions(path: Path) -> dict[Key, dict[str, tuple[float, int, float]]]:
    """Per configuration, per patient: (probability, prompt tokens, seconds); a later row replaces an earlier one
    (a configuration torn by an interruption and run again)."""
    out: dict[Key, dict[str, tuple[float, int, float]]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            key = (row["model"], row["retriever"], row["content"], row["strategy"], int(row["seed"]), int(row["k"]))
            out.setdefault(key, {})[row["patient_id"]] = (float(row["probability"]), int(row["prompt_tokens"]),
                                                          float(row["seconds"]))
    return out


def complete(preds: dict[Key, dict], ids: list[str]) -> dict[Key, dict]:
    """The configurations that have a prediction for every test patient."""
    return {key: rows for key, rows in preds.items() if all(i in rows for i in ids)}


def model_name(model: str) -> str:
    return "base" if model == "default" else f"{Path(model).name} SFT"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for col, m in enumerate(models):
        ax, ax2 = axes[0, col], axes[1, col]
        sub = [r for r in rows if r["model"] == m]
        curves = list(dict.fromkeys((r["retriever"], r["content"], r["strategy"]) for r in sub if r["k"] > 0))
        for curve in curves:
            same = lambda r, curve=curve: (r["retriever"], r["content"], r["strategy"]) == curve  # noqa: E731
            retriever, content, strategy = curve
            pts = sorted({r["k"] for r in sub if same(r)})
            zero = [r for r in sub if r["k"] == 0]
            mean, lo, hi, tok = [], [], [], []
            for k in pts:
                rs = [r for r in sub if r["k"] == k and same(r)]
                mean.append(np.mean([r["auroc"] for r in rs]))
                lo.append(np.mean([r["auroc_lo"] for r in rs]))
                hi.append(np.mean([r["auroc_hi"] for r in rs]))
                tok.append(np.mean([r["mean_prompt_tokens"] for r in rs]))
            if zero:
                pts, mean = [0] + pts, [zero[0]["auroc"]] + mean
                lo, hi = [zero[0]["auroc_lo"]] + lo, [zero[0]["auroc_hi"]] + hi
                tok = [zero[0]["mean_prompt_tokens"]] + tok
            label = f"{retriever}: {content}, {strategy}" + (" (mean of seeds)" if strategy == "random" else "")
            line = ax.plot(pts, mean, marker="o", label=label, ls="-" if retriever == "dense" else "--")[0]
            ax.fill_between(pts, lo, hi, color=line.get_color(), alpha=0.08)
            lat = [np.mean([r["seconds_per_prompt"] for r in sub if r["k"] == k and (same(r) or k == 0)])
                   for k in pts]
            ax2.plot(tok, lat, marker="o", color=line.get_color(), label=label)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks([0, 1, 2, 4, 8, 16])
        ax.set_xticklabels(["0", "1", "2", "4", "8", "16"])
        n, cases = sub[0]["n"], sub[0]["cases"]
        ax.set(title=f"{m}: AUROC vs demonstrations\n({n} patients, {cases} cases; bands: bootstrap 95% CI)",
               xlabel="demonstrations k (nested sets)", ylabel="AUROC")
        ax.legend(fontsize=7)
        ax2.set(title=f"{m}: latency vs prompt length", xlabel="mean prompt tokens", ylabel="seconds per prompt")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="default", help="comma-separated: default and/or checkpoint folders")
    ap.add_argument("--n", type=int, default=60, help="test patients")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="8 patients, a 210-patient pool, k in {0, 1, 2}")
    ap.add_argument("--fresh", action="store_true", help="ignore finished configurations in the predictions file")
    ap.add_argument("--retrievers", default="dense,prognostic", help="comma-separated retrievers (dense first)")
    ap.add_argument("--out", type=Path, default=RESULTS / "demo_sweep.csv")
    args = ap.parse_args()
    n = 8 if args.quick else args.n
    ks = [0, 1, 2] if args.quick else [0, 1, 2, 4, 8, 16]
    where = machine()
    print(f"machine: {where}", flush=True)
    pool, test = demo_cohort(n, quick=args.quick)
    labels = [p.label for p in test]
    rng = np.random.default_rng(0)
    shuffled = dict(zip([p.patient_id for p in pool], rng.permutation([p.label for p in pool]).tolist()))
    by_id = {p.patient_id: p for p in pool}

    retrievers = [x.strip() for x in args.retrievers.split(",") if x.strip()]
    embedder = ProfileEmbedder()
    kmax = max(ks)
    lists: dict[tuple[str, str, int], list[list]] = {}
    for retriever in retrievers:
        base_cfg = RetrievalConfig(k=kmax, retriever=retriever)
        index = DemoIndex.build(pool, make_representation(base_cfg, embedder), progress=False)
        for _, strategy, seed in configurations(args.quick, True, retriever):
            if (retriever, strategy, seed) not in lists:
                cfg = base_cfg.model_copy(update={"strategy": strategy, "seed": seed})
                r = Retriever(cfg, embedder).fit(pool, index, progress=False)
                lists[(retriever, strategy, seed)] = [nested(x.hits, strategy) for x in r.retrieve(test, progress=False)]

    pred_path = args.out.with_name(args.out.stem + "_predictions.csv")
    ids = [p.patient_id for p in test]
    if pred_path.exists() and not args.fresh:
        _upgrade(pred_path)
        done = set(complete(read_predictions(pred_path), ids))
    else:
        done = set()
        pred_path.parent.mkdir(parents=True, exist_ok=True)
        with pred_path.open("w", newline="") as fh:
            csv.writer(fh).writerow(COLUMNS)

    plan = []
    for model in args.models.split(","):
        name = model_name(model)
        plan.append((model, name, "-", "none", "-", 0, 0))
        base = model == "default" or args.quick  # --quick runs every curve, whatever the model
        for retriever in retrievers:
            for content, strategy, seed in configurations(args.quick, base, retriever):
                for k in ks[1:]:
                    if k <= largest_k(content, strategy, base, ks):
                        plan.append((model, name, retriever, content, strategy, seed, k))
    todo = [p for p in plan if p[1:] not in done]
    print(f"{len(plan)} configurations, {len(plan) - len(todo)} already done", flush=True)
    backend, loaded = None, None
    with progress_bar("configurations", len(todo)) as advance:
        for model, name, retriever, content, strategy, seed, k in todo:
            if loaded != model:
                backend, loaded = None, None
                backend = open_backend(model, EngineOptions(), progress=False)
                loaded = model
            demos = {"none": "none", "shuffled": "label"}.get(content, content)
            builder = PromptBuilder(backend.tokenizer, PromptConfig(demos=demos, query_tokens=QUERY_TOKENS,
                                                                    demo_tokens=DEMO_TOKENS), backend.max_context)
            hits = lists[(retriever, strategy, seed)] if k else [[] for _ in test]
            if content == "shuffled":  # the same demos, each shown with a permuted pool label
                hits = [[dataclasses.replace(h, label=int(shuffled[h.patient_id])) for h in hs] for hs in hits]
            probs, rows = [], []
            for p, h in zip(test, hits):
                start = time.perf_counter()
                bp = builder.build(p, h[:k], by_id)
                prob = choice_probabilities(backend.score(bp.text, builder.choices))[0]
                secs = time.perf_counter() - start
                probs.append(prob)
                rows.append([name, retriever, content, strategy, seed, k, p.patient_id, p.label, f"{prob:.6f}",
                             bp.n_tokens, f"{secs:.3f}"])
            with pred_path.open("a", newline="") as fh:
                csv.writer(fh).writerows(rows)
            advance(1, f"{name} {retriever} {content} {strategy}{seed if strategy == 'random' else ''} k={k}: "
                       f"AUROC {summary(labels, probs)['auroc'] or float('nan'):.3f}")

    out = []
    cases = int(sum(labels))
    for (name, retriever, content, strategy, seed, k), rows in complete(read_predictions(pred_path), ids).items():
        probs = [rows[i][0] for i in ids]
        ci = bootstrap_ci(labels, probs, n_resamples=args.bootstrap, seed=0, metrics=("auroc",))["auroc"]
        m = summary(labels, probs)
        vote = {"vote_auroc": None, "vote_auroc_lo": None, "vote_auroc_hi": None}
        if k and (retriever, strategy, seed) in lists:  # the vote of the very demos shown (their true labels)
            votes = [float(np.mean([h.label for h in hs[:k]])) if hs[:k] else 0.0
                     for hs in lists[(retriever, strategy, seed)]]
            v = bootstrap_ci(labels, votes, n_resamples=args.bootstrap, seed=0, metrics=("auroc",))["auroc"]
            vote = {"vote_auroc": round(v["value"], 4), "vote_auroc_lo": round(v["lo"], 4),
                    "vote_auroc_hi": round(v["hi"], 4)}
        out.append({"model": name, "retriever": retriever, "content": content, "strategy": strategy, "seed": seed,
                    "k": k, "n": len(test), "cases": cases, "auroc": round(ci["value"], 4),
                    "auroc_lo": round(ci["lo"], 4), "auroc_hi": round(ci["hi"], 4), **vote,
                    "auprc": round(m["auprc"], 4), "brier": round(m["brier"], 4),
                    "mean_prompt_tokens": round(float(np.mean([rows[i][1] for i in ids])), 1),
                    "seconds_per_prompt": round(float(np.mean([rows[i][2] for i in ids])), 3), "machine": where})
    order = {key: i for i, key in enumerate(p[1:] for p in plan)}
    out.sort(key=lambda r: order.get((r["model"], r["retriever"], r["content"], r["strategy"], r["seed"], r["k"]),
                                     1 << 30))
    write_csv(args.out, out)
    _plot(out, args.out.with_suffix(".png"))
    print(f"{'model':14s} {'retriever':10s} {'content':9s} {'strategy':9s} {'k':>3s} {'AUROC (95% CI)':>22s} "
          f"{'vote':>6s} {'tokens':>7s} {'s/prompt':>8s}")
    for r in out:
        strat = r["strategy"] + (str(r["seed"]) if r["strategy"] == "random" else "")
        vote = "" if r["vote_auroc"] is None else f"{r['vote_auroc']:.3f}"
        print(f"{r['model']:14s} {r['retriever']:10s} {r['content']:9s} {strat:9s} {r['k']:3d} {r['auroc']:.3f} "
              f"({r['auroc_lo']:.3f}-{r['auroc_hi']:.3f}) {vote:>6s} {r['mean_prompt_tokens']:7.0f} "
              f"{r['seconds_per_prompt']:8.3f}")
    print(f"wrote {args.out}, {pred_path.name} and {args.out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
