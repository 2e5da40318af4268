"""Scoring throughput: the toolkit against the naive way, and against the model's raw forward pass.

    .venv/bin/python benchmarks/scoring_throughput.py                 # full run (about 9.5 min on 2 cores)
    .venv/bin/python benchmarks/scoring_throughput.py --quick --model PATH   # seconds, for the smoke test
    python benchmarks/scoring_throughput.py --backend vllm --device cuda     # on a GPU: the toolkit on vLLM

Four arms on the same prompts, one after another in one run, each in its own
child process (so each one's peak memory is its own; loading is not timed):

* ``toolkit``: ``Predictor.predict_proba`` end to end: retrieval (index loaded
  beforehand), prompt building, scoring of " Yes"/" No" at the answer slot,
  bookkeeping. Gives probabilities.
* ``naive``: what a user would otherwise write, as generation-based few-shot
  tools do: per patient a transformers ``text-generation`` pipeline call with
  the same model and prompt, ``max_new_tokens=16``, greedy, then Yes/No parsed
  from the text. Gives hard labels only (an unparseable answer counts as No).
* ``toolkit bf16``: the same toolkit arm with ``--dtype bfloat16`` (what ``auto``
  means on a CPU with native bf16: the body in bf16, final norm and output layer
  in float32), against ``toolkit`` run with ``--dtype float32``; the rows give the
  tokens/s ratio, the largest and mean |P(yes) bf16 - P(yes) fp32| over the same
  prompts, and both AUROCs. Skipped (with the reason in the output) on a CPU
  without native bf16, where bf16 is emulated and slower.
* ``raw``: the model's forward pass alone over the same token ids, the same
  batch size and the same one-slot output as the toolkit's hf backend
  (``logits_to_keep=1``), nothing else around it.

Targets (issue 6): the toolkit at least 80% of the raw forward pass's tokens/s
(retrieval, prompt building and bookkeeping cost under a fifth); on a GPU with
``--backend vllm``, at least 10x the naive way. Issue 17: on a CPU with native
bf16, bf16 at least 1.5x fp32's tokens/s with max |dP(yes)| <= 0.02 and AUROC
within 0.01. The naive and raw arms run in float32 (today's baseline). Prompts: ``--n`` test patients
of the `make demo` cohort with k=4 rationale demos (similar), compact budgets.
Writes scoring_throughput.csv.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, demo_cohort, in_child, machine, write_csv  # noqa: E402

from icl_toolkit.core import hardware  # noqa: E402

K, QUERY_TOKENS, DEMO_TOKENS = 4, 160, 100
ANSWER = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def _config():
    from icl_toolkit.inference.config import PredictConfig

    # the dense retriever, as in the committed results (retrieval is a few per cent of the cost either way)
    return PredictConfig.from_options(k=K, retriever="dense", demos="rationale", query_tokens=QUERY_TOKENS,
                                      demo_tokens=DEMO_TOKENS)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arm_toolkit(model: str, engine: dict, n: int, quick: bool, index_dir: str) -> dict:
    from icl_toolkit.backends.options import EngineOptions, open_backend
    from icl_toolkit.inference.predictor import Predictor

    pool, test = demo_cohort(n, quick=quick)
    backend = open_backend(model, EngineOptions(**engine), progress=False)
    predictor = Predictor(backend, _config(), progress=False).fit(pool, index_dir)
    predictor.predict_proba(test[:1])  # warm-up (first-call allocations)
    start = time.perf_counter()
    preds = predictor.predict_proba(test)
    secs = time.perf_counter() - start
    return {"seconds": secs, "tokens": sum(p.prompt_tokens for p in preds), "peak_mb": _peak_mb(),
            "scores": [p.probability for p in preds], "labels": [p.label for p in preds]}


def arm_naive(model: str, device: str, texts: list[str], labels: list[int]) -> dict:
    from transformers import pipeline

    from icl_toolkit.core.models import load_lm

    lm, tok = load_lm(model, device=device, dtype="float32")
    gen = pipeline("text-generation", model=lm, tokenizer=tok, device=lm.device)
    gen(texts[0], max_new_tokens=16, do_sample=False, return_full_text=False)  # warm-up
    start = time.perf_counter()
    answers = [gen(t, max_new_tokens=16, do_sample=False, return_full_text=False)[0]["generated_text"] for t in texts]
    secs = time.perf_counter() - start
    parsed = [ANSWER.search(a) for a in answers]
    hard = [1 if m and m.group(1).lower() == "yes" else 0 for m in parsed]
    return {"seconds": secs, "peak_mb": _peak_mb(), "scores": hard, "labels": labels,
            "unparsed": sum(m is None for m in parsed)}


def arm_raw(model: str, device: str, ids: list[list[int]]) -> dict:
    import torch

    from icl_toolkit.core.models import load_lm

    lm, _ = load_lm(model, device=device, dtype="float32")
    with torch.inference_mode():
        lm(torch.tensor([ids[0]], device=device), logits_to_keep=1)  # warm-up
        start = time.perf_counter()
        for seq in ids:  # batch size 1, as the toolkit's hf backend on CPU
            lm(torch.tensor([seq], device=device), logits_to_keep=1)
        secs = time.perf_counter() - start
    return {"seconds": secs, "tokens": sum(len(s) for s in ids), "peak_mb": _peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=48, help="test patients (prompts)")
    ap.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="backend of the toolkit arm")
    ap.add_argument("--device", default="cpu", help="device of the naive and raw arms (and of hf)")
    ap.add_argument("--quick", action="store_true", help="4 patients, a 210-patient pool")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 arm")
    ap.add_argument("--out", type=Path, default=RESULTS / "scoring_throughput.csv")
    args = ap.parse_args()
    n = 4 if args.quick else args.n
    where = machine()
    print(f"machine: {where}", flush=True)

    from icl_toolkit.backends import encode_prompt
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.evaluation.metrics import summary
    from icl_toolkit.inference.predictor import Predictor
    from icl_toolkit.retrieval.embedder import ProfileEmbedder
    from icl_toolkit.retrieval.index import DemoIndex

    pool, test = demo_cohort(n, quick=args.quick)
    labels = [p.label for p in test]
    shape = HFBackend(args.model, progress=False)  # on the CPU: only its tokenizer and context limit are used
    tok = shape.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        embedder = ProfileEmbedder()
        DemoIndex.build(pool, embedder, progress=False).save(tmp)
        # the exact prompts the toolkit will score, for the naive and raw arms
        shaper = Predictor(shape, _config(), embedder=embedder, progress=False).fit(pool, tmp)
        texts = [bp.text for bp in shaper.build_prompts(test, shaper.retrieve(test))]
        ids = [encode_prompt(tok, t) for t in texts]
        del shape, shaper
        engine = {"backend": args.backend} | ({"device": args.device} if args.backend == "hf" else {})
        hf_cpu = args.backend == "hf" and args.device == "cpu"
        bf16 = hf_cpu and not args.no_bf16 and hardware.cpu_bf16()
        if hf_cpu and not bf16:
            print("bf16 arm skipped: " + ("--no-bf16" if args.no_bf16 else f"{hardware.cpu_name()} has no native "
                                          "bf16 (emulated bf16 is slower than fp32)"), flush=True)
        print(f"{len(texts)} prompts, {sum(map(len, ids)):,} tokens; running naive, toolkit, "
              f"{'toolkit bf16, ' if bf16 else ''}raw", flush=True)
        naive = in_child(arm_naive, args.model, args.device, texts, labels)
        toolkit = in_child(arm_toolkit, args.model, engine | ({"dtype": "float32"} if hf_cpu else {}), n,
                            args.quick, tmp)
        arms = [("naive generate+parse", naive, "hard labels"), ("toolkit", toolkit, "probabilities")]
        if bf16:
            arms.append(("toolkit bf16", in_child(arm_toolkit, args.model, engine | {"dtype": "bfloat16"}, n,
                                                   args.quick, tmp), "probabilities"))
        raw = in_child(arm_raw, args.model, args.device, ids)
    assert toolkit["labels"] == labels
    tokens = raw["tokens"]
    rows = []
    for name, res, what in arms + [("raw forward pass", raw, "-")]:
        delta = (np.abs(np.array(res["scores"]) - np.array(toolkit["scores"])) if what == "probabilities"
                 else None)
        auroc = summary(labels, res["scores"])["auroc"] if "scores" in res else None
        rows.append({"arm": name, "backend": args.backend if name == "toolkit" else "hf", "prompts": len(texts),
                     "prompt_tokens": tokens, "seconds": round(res["seconds"], 2),
                     "prompts_per_s": round(len(texts) / res["seconds"], 3),
                     "tokens_per_s": round(tokens / res["seconds"], 1),
                     "speedup_vs_naive": round(naive["seconds"] / res["seconds"], 2),
                     "fraction_of_raw": round(raw["seconds"] / res["seconds"], 3),
                     "auroc": "" if auroc is None else round(auroc, 4), "output": what,
                     "dtype": "bfloat16" if "bf16" in name else "float32",
                     "max_abs_dp_vs_fp32": "" if delta is None else round(float(delta.max()), 4),
                     "mean_abs_dp_vs_fp32": "" if delta is None else round(float(delta.mean()), 4),
                     "unparsed_answers": naive["unparsed"] if name.startswith("naive") else "",
                     "peak_rss_mb": round(res["peak_mb"]), "machine": where})
    write_csv(args.out, rows)
    print(f"{'arm':22s} {'prompts/s':>9s} {'tokens/s':>9s} {'x naive':>8s} {'of raw':>7s} {'AUROC':>6s} {'peak MB':>8s}")
    for r in rows:
        print(f"{r['arm']:22s} {r['prompts_per_s']:9.3f} {r['tokens_per_s']:9.1f} {r['speedup_vs_naive']:8.2f} "
              f"{r['fraction_of_raw']:7.3f} {str(r['auroc']):>6s} {r['peak_rss_mb']:8d}")
    if bf16:
        b, f = rows[2], rows[1]
        print(f"bf16 vs fp32: {b['tokens_per_s'] / f['tokens_per_s']:.2f}x tokens/s, max |dP(yes)| "
              f"{b['max_abs_dp_vs_fp32']}, mean {b['mean_abs_dp_vs_fp32']}, AUROC {b['auroc']} vs {f['auroc']}")
    print(f"naive answers without a parseable Yes/No: {naive['unparsed']} of {len(texts)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
