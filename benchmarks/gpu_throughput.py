"""Prompted-prediction throughput of a backend (made for vLLM on a GPU): prompts/s and tokens/s at
k in {0, 2, 4, 8} demonstrations, in score mode and in reason mode.

    python benchmarks/gpu_throughput.py                          # vllm, embedded SmolLM2, 512 patients
    python benchmarks/gpu_throughput.py --backend hf --device cuda
    python benchmarks/gpu_throughput.py --model path/to/ckpt --n 2048 --dtype bfloat16
    python benchmarks/gpu_throughput.py --quick --backend hf      # seconds, for the smoke test

Each configuration predicts the same ``--n`` synthetic test patients with demos
retrieved (embedded MiniLM, exact index) from a 1,000-patient pool (``--pool``). Retrieval is
done before the clock starts; the clock covers prompt building and the backend
(score mode: one scoring call over all prompts; reason mode: batched generation
of up to ``--reason-tokens`` tokens, then scoring). One warm-up batch runs first
so that engine compilation is not counted. tokens/s counts prompt tokens plus,
in reason mode, generated tokens.

Results go to benchmarks/results/gpu_throughput.csv and .png when a GPU is
visible (or to --out when given); on a machine without a GPU the table is only
printed, since CPU numbers are not what this benchmark is for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, gpu_name, machine, write_csv  # noqa: E402

from icl_toolkit.backends.options import EngineOptions, open_backend  # noqa: E402
from icl_toolkit.core.progress import progress_bar  # noqa: E402
from icl_toolkit.data.synth import SynthConfig, generate_cohort  # noqa: E402
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.inference.predictor import Predictor  # noqa: E402
from icl_toolkit.retrieval.embedder import ProfileEmbedder  # noqa: E402


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode in sorted({r["mode"] for r in rows}):
        sub = [r for r in rows if r["mode"] == mode]
        ks = [r["k"] for r in sub]
        axes[0].plot(ks, [r["prompts_per_s"] for r in sub], marker="o", label=mode)
        axes[1].plot(ks, [r["tokens_per_s"] for r in sub], marker="o", label=mode)
    axes[0].set(xlabel="demonstrations k", ylabel="prompts / s", title="prompt throughput")
    axes[1].set(xlabel="demonstrations k", ylabel="tokens / s", title="token throughput (prompt + generated)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="vllm", choices=["vllm", "hf", "openai", "auto"])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=512, help="test patients per configuration")
    ap.add_argument("--k", default="0,2,4,8", help="demonstration counts")
    ap.add_argument("--modes", default="score,reason")
    ap.add_argument("--reason-tokens", type=int, default=128)
    ap.add_argument("--dtype", default=None, help="hf, vllm: weights dtype (default: the backend's)")
    ap.add_argument("--device", default=None, help="hf backend device")
    ap.add_argument("--batch-size", type=int, default=None, help="hf backend scoring batch")
    ap.add_argument("--max-context", type=int, default=None, help="context limit (vLLM's max_model_len)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--url", default=None, help="openai backend server URL")
    ap.add_argument("--pool", type=int, default=1000, help="demonstration pool size")
    ap.add_argument("--quick", action="store_true", help="4 patients, a pool of 100, k in {0, 2}, 16 reason tokens")
    ap.add_argument("--out", type=Path, default=None, help="CSV path (PNG beside it)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.pool, args.k, args.reason_tokens = 4, 100, "0,2", 16
    ks = [int(x) for x in args.k.split(",")]
    modes = args.modes.split(",")
    opts = {k: v for k, v in dict(backend=args.backend, dtype=args.dtype, device=args.device,
                                  batch_size=args.batch_size, max_context=args.max_context,
                                  gpu_memory_utilization=args.gpu_memory_utilization, url=args.url).items()
            if v is not None}
    where = machine()
    print(f"machine: {where}", flush=True)

    cohort = generate_cohort(SynthConfig(n=args.pool + args.n, seed=7))
    pool, test = cohort[:args.pool], cohort[args.pool:]
    backend = open_backend(args.model, EngineOptions(**opts), progress=False)
    embedder = ProfileEmbedder()
    rows = []
    with progress_bar("configurations", len(ks) * len(modes)) as advance:
        for mode in modes:
            for k in ks:
                cfg = PredictConfig.from_options(k=k, demos="rationale", mode=mode, reason_tokens=args.reason_tokens,
                                                 query_tokens=400, demo_tokens=200)
                predictor = Predictor(backend, cfg, embedder=embedder, progress=False).fit(pool)
                retrievals = predictor.retrieve(test)
                predictor.predict_proba(test[:2], retrievals[:2])  # warm-up: compilation, caches
                start = time.perf_counter()
                preds = predictor.predict_proba(test, retrievals)
                secs = time.perf_counter() - start
                prompt_tokens = sum(p.prompt_tokens for p in preds)
                generated = sum(len(backend.tokenizer(p.reasoning or "", add_special_tokens=False).input_ids)
                                for p in preds) if mode == "reason" else 0
                rows.append({"backend": args.backend, "model": backend.model_id, "mode": mode, "k": k,
                             "prompts": len(preds), "seconds": round(secs, 3),
                             "prompts_per_s": round(len(preds) / secs, 2),
                             "mean_prompt_tokens": round(prompt_tokens / len(preds), 1),
                             "generated_tokens": generated,
                             "tokens_per_s": round((prompt_tokens + generated) / secs, 1), "machine": where})
                r = rows[-1]
                advance(1, f"{mode} k={k}: {r['prompts_per_s']} prompts/s")
    print(f"{'mode':8s} {'k':>3s} {'prompts/s':>10s} {'tokens/s':>10s} {'prompt tok':>10s} {'generated':>9s}")
    for r in rows:
        print(f"{r['mode']:8s} {r['k']:3d} {r['prompts_per_s']:10.2f} {r['tokens_per_s']:10.1f} "
              f"{r['mean_prompt_tokens']:10.1f} {r['generated_tokens']:9d}")
    out = args.out or (RESULTS / "gpu_throughput.csv" if gpu_name() else None)
    if out is None:
        print("no GPU visible: results not saved (pass --out to keep them)")
        return
    write_csv(out, rows)
    _plot(rows, out.with_suffix(".png"), f"{args.backend} on {where}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
