"""What one prediction costs a `vllm serve` over HTTP (``--backend openai``), read from the server's own counters:
the one-pass path (the prompt once, the answer tokens' log-probabilities at the next position through vLLM's
``logprob_token_ids``) against the echo path it replaced (prompt + each choice, echoed prompt log-probabilities).

    .venv-vllm/bin/python benchmarks/openai_passes.py            # 48 predictions, 2 rounds; ~10 min on 2 cores
    .venv-vllm/bin/python benchmarks/openai_passes.py --quick    # 8 predictions, 1 round (make test-vllm)

Needs vLLM (``make test-vllm`` sets up .venv-vllm with the CPU build). Each path gets a server of its own, started
fresh (a cold prefix cache), the same prompts (k=4 label demos from the `make demo` cohort's pool, the embedded
SmolLM2 in float32) and the same batch size; rounds alternate the paths. Per prediction, from
``/metrics``: prompt tokens the server received (``vllm:prompt_tokens``), computed (``vllm:prompt_tokens_by_source``,
``local_compute``) and read from its prefix cache (``vllm:prefix_cache_hits``); and wall time. Writes
openai_passes.csv (one row per path and round) and openai_passes_summary.csv (the ratios one-pass / echo).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, demo_cohort, machine, write_csv  # noqa: E402

PATHS = ("echo", "one-pass")
TOKENS = "vllm:prompt_tokens_total"
COMPUTED = "vllm:prompt_tokens_by_source_total{source=local_compute}"
HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"


def build_prompts(n: int, *, quick: bool) -> list[str]:
    """``n`` prompts as ``icl predict`` builds them: k=4 label demos, the default (prognostic) retriever."""
    from icl_toolkit.backends.hf import HFBackend
    from icl_toolkit.inference.config import PredictConfig
    from icl_toolkit.inference.predictor import Predictor
    from icl_toolkit.prompting.config import PromptConfig
    from icl_toolkit.retrieval.config import RetrievalConfig

    pool, test = demo_cohort(n, quick=quick)
    cfg = PredictConfig(retrieval=RetrievalConfig(k=4), prompt=PromptConfig(demos="label", query_tokens=200,
                                                                            demo_tokens=120))
    predictor = Predictor(HFBackend("default", progress=False), cfg, progress=False).fit(pool)
    return [bp.text for bp in predictor.build_prompts(test, predictor.retrieve(test))]


def measure(path: str, warm: str, prompts: list[str], batch_size: int) -> tuple[dict, np.ndarray]:
    """Score ``prompts`` on a fresh server by ``path`` (after ``warm``, not counted); the counters' increase per
    prediction and the P(yes)."""
    from icl_toolkit.backends import choice_probabilities
    from icl_toolkit.backends.openai_api import OpenAIBackend
    from icl_toolkit.serve.launch import scrape_counters, start_vllm_server

    with start_vllm_server() as server:
        client = OpenAIBackend("default", url=server.base + "/v1", batch_size=batch_size, progress=False)
        if path == "echo":
            client.next_token_scoring = False  # the path before: prompt + each choice, echoed log-probs
        client.score([warm], [" Yes", " No"])  # a first request warms the server; not counted below
        before = scrape_counters(server.base, "vllm:")
        start = time.perf_counter()
        scores = client.score(prompts, [" Yes", " No"])
        wall = time.perf_counter() - start
        after = scrape_counters(server.base, "vllm:")
        if path == "one-pass" and client.next_token_scoring is not True:
            raise SystemExit("the server did not answer logprob_token_ids: no one-pass path to measure")
    n = len(prompts)

    def per(key: str) -> float:
        if key not in after:
            raise SystemExit(f"the server's /metrics has no {key}; counters seen: {sorted(after)[:20]}")
        return (after[key] - before.get(key, 0.0)) / n

    own = float(np.mean([len(client.encode(p)) for p in prompts]))
    row = {
        "path": path,
        "predictions": n,
        "prompt_tokens": round(own, 1),
        "tokens_received": round(per(TOKENS), 1),
        "tokens_computed": round(per(COMPUTED), 1),
        "cache_hit_tokens": round(per(HITS), 1),
        "cache_query_tokens": round(per(QUERIES), 1),
        "seconds_per_prediction": round(wall / n, 4),
    }
    return row, np.array([choice_probabilities(s)[0] for s in scores])


def run(n: int, rounds: int, batch_size: int, *, quick: bool) -> tuple[list[dict], dict]:
    prompts = build_prompts(n + 1, quick=quick)  # the first one warms each server
    rows, probs = [], {}
    for r in range(rounds):
        for path in PATHS if r % 2 == 0 else PATHS[::-1]:
            row, p = measure(path, prompts[0], prompts[1:], batch_size)
            rows.append({"round": r + 1, **row})
            probs[path] = p
            print(row, flush=True)
    mean = {p: {k: float(np.mean([r[k] for r in rows if r["path"] == p])) for k in rows[0] if k not in
                ("round", "path")} for p in PATHS}
    summary = {
        "predictions": n,
        "rounds": rounds,
        "batch_size": batch_size,
        "prompt_tokens": mean["echo"]["prompt_tokens"],
        **{f"{k}_{p.replace('-', '_')}": mean[p][k] for p in PATHS for k in
           ("tokens_received", "tokens_computed", "cache_hit_tokens", "seconds_per_prediction")},
        "computed_ratio": mean["one-pass"]["tokens_computed"] / mean["echo"]["tokens_computed"],
        "received_ratio": mean["one-pass"]["tokens_received"] / mean["echo"]["tokens_received"],
        "time_ratio": mean["one-pass"]["seconds_per_prediction"] / mean["echo"]["seconds_per_prediction"],
        "max_p_yes_difference": float(np.abs(probs["echo"] - probs["one-pass"]).max()),
        "target_computed_ratio_max": 0.5,
        "machine": machine(),
    }
    summary["target_met"] = summary["computed_ratio"] <= 0.5
    return rows, summary


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="predictions per path and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per HTTP request (both paths)")
    ap.add_argument("--quick", action="store_true", help="8 predictions, 1 round, small cohort")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.rounds = min(args.n, 8), 1
    rows, summary = run(args.n, args.rounds, args.batch_size, quick=args.quick)
    write_csv(args.out / "openai_passes.csv", rows)
    write_csv(args.out / "openai_passes_summary.csv", [summary])
    print(summary)
    return summary


if __name__ == "__main__":
    main()
