"""Simulated deployments of a served predictor, one per stream, and what ``icl monitor`` says about each
(``make monitor-streams``).

A synthetic cohort is split into a demonstration pool, a calibration set with known outcomes (its predictions fit
the calibrator of the estimated performance and are the reference of prediction drift) and the patients each
stream sends. Every stream is its own deployment: the service's HTTP app with a monitor folder, 30-day windows on
a simulated clock (:class:`~icl_toolkit.serve.simulate.SimulatedDeployment`):

- ``stable``: patients like the pool's (``--stable-windows`` windows of ``--window-size``);
- ``coding_change``: half of the ICD-10-CM codes replaced by another code set;
- ``shorter_histories``: half of the patients at a site whose records reach back one year;
- ``older_population``: only patients aged 80 or more, the same model;
- ``mismatched_pool``: ordinary patients, served with a pool of patients under 65 (a pool built for another
  clinic's population).

``icl monitor`` runs twice per stream: before any outcome has arrived (estimated performance and drift only), then
after every outcome is fed back through ``POST /v1/feedback`` (realized beside estimated). Resumable: patients
already logged are not sent again. Results: ``results/monitor_streams`` (summary.json, the alert matrix,
estimated against realized AUROC per window, each stream's monitor.json and page).

    .venv/bin/python recipes/monitor_streams.py --out monitor_streams_out --results results/monitor_streams
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
from pathlib import Path

from icl_toolkit.core.artifacts import write_json_atomic
from icl_toolkit.core.hardware import describe
from icl_toolkit.data.synth.generate import SynthConfig, generate_cohort
from icl_toolkit.evaluation.monitor import AlertSettings, monitor_report, write_monitor_page
from icl_toolkit.evaluation.monitor.streams import aged, recode, shorten_at_site
from icl_toolkit.inference.config import PredictConfig
from icl_toolkit.serve.schemas import PredictOptions
from icl_toolkit.serve.service import PredictionService
from icl_toolkit.serve.simulate import SimulatedDeployment

START = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
WINDOW = dt.timedelta(days=30)
KEY = b"monitor-streams-simulation-key-0001"
STREAMS = ("stable", "coding_change", "shorter_histories", "older_population", "mismatched_pool")
POOL_SIGNALS = ["input_age", "input_events", "input_history_days", "code_mix", "unseen_codes", "vocabulary"]
EXPECTED = {  # stream: (the alerts it is built to raise, others that may come with them), written before any run
    "stable": ([], []),
    "coding_change": (["code_mix", "unseen_codes", "vocabulary"], ["multivariate"]),
    "shorter_histories": (
        ["input_events", "input_history_days"],
        ["multivariate", "prediction_drift", "neighbour_similarity", "code_mix"],
    ),
    "older_population": (["input_age", "prediction_drift"], ["multivariate", "demo_vote", "input_events"]),
    # the reference is the pool, so every pool-referenced signal may fire when the pool is what changed
    "mismatched_pool": (["neighbour_similarity"], [*POOL_SIGNALS, "multivariate", "prediction_drift", "demo_vote"]),
}


def build_streams(args: argparse.Namespace) -> dict[str, dict]:
    """The pool, calibration set and stream patients (the generator is seeded: a resumed run builds the same)."""
    n_stream = args.window_size
    sizes = {
        "pool": args.pool,
        "calibration": args.calibration,
        "stable": args.stable_windows * args.stable_window_size,
    }
    sizes |= {s: n_stream for s in ("coding_change", "shorter_histories", "mismatched_pool")}
    need = sum(sizes.values()) + 6 * n_stream + 8 * args.pool  # the older stream and young pool: from the rest
    cohort = generate_cohort(SynthConfig(n=need, seed=args.seed, rationales=False))  # the same on every run
    random.Random(args.seed).shuffle(cohort)  # the generator's order is not exchangeable; streams are random draws
    parts, at = {}, 0
    for name, n in sizes.items():
        parts[name], at = cohort[at : at + n], at + n
    parts["older_population"] = aged(cohort[at:], 80)[:n_stream]
    young_pool = aged(cohort[at:], 0, 65)[: args.pool]
    parts["coding_change"] = recode(parts["coding_change"], 0.5, seed=args.seed)
    parts["shorter_histories"] = shorten_at_site(parts["shorter_histories"], 0.5, keep_days=365, seed=args.seed)
    streams = {}
    for name in STREAMS:
        pats = parts[name]
        size = args.stable_window_size if name == "stable" else n_stream
        windows = [pats[i : i + size] for i in range(0, len(pats), size)]
        streams[name] = {"pool": young_pool if name == "mismatched_pool" else parts["pool"], "windows": windows}
    streams["_calibration"] = {"patients": parts["calibration"]}
    return streams


def make_service(args: argparse.Namespace, pool: list) -> PredictionService:
    from icl_toolkit.backends.options import EngineOptions, open_backend

    if args.model == "tiny":
        from icl_toolkit.backends.testing import tiny_backend

        backend = tiny_backend(0)
    else:
        backend = open_backend(args.model, EngineOptions(), progress=False)
    config = PredictConfig.from_options(
        k=args.k, demos="label", query_tokens=args.query_tokens, demo_tokens=args.demo_tokens
    )
    embedder = None
    if args.embedder == "hash":
        from icl_toolkit.retrieval.embedder import HashEmbedder

        embedder = HashEmbedder()
    return PredictionService(backend, pool, None, config, embedder=embedder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("monitor_streams_out"))
    ap.add_argument("--results", type=Path, default=Path("results/monitor_streams"))
    ap.add_argument("--model", default="default", help="a model name, or `tiny` (the random test model)")
    ap.add_argument("--embedder", choices=["default", "hash"], default="default")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--pool", type=int, default=1500)
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--window-size", type=int, default=500)
    ap.add_argument("--stable-windows", type=int, default=3)
    ap.add_argument("--stable-window-size", type=int, default=1000)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--query-tokens", type=int, default=128)
    ap.add_argument("--demo-tokens", type=int, default=96)
    ap.add_argument("--streams", default=",".join(STREAMS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    streams = build_streams(args)
    options = PredictOptions(k=args.k, demos="label")
    calib = args.out / "calibration_predictions.jsonl"
    services: dict[int, PredictionService] = {}

    def service_for(pool: list) -> PredictionService:
        if id(pool) not in services:
            services[id(pool)] = make_service(args, pool)
        return services[id(pool)]

    if not calib.exists():
        service = service_for(streams["stable"]["pool"])
        recs = service.predict_now(streams["_calibration"]["patients"], options)
        calib.write_text("".join(json.dumps(r) + "\n" for r in recs))
        print(f"calibration set: {len(recs)} predictions", flush=True)
    settings = AlertSettings()
    summary: dict = {"machine": describe(), "settings": settings.model_dump(), "streams": {}}
    for name in args.streams.split(","):
        s = streams[name]
        folder = args.out / name
        windows = s["windows"]
        with SimulatedDeployment(service_for(s["pool"]), folder, KEY, start=START, window=WINDOW, options=options) as d:
            for w, pats in enumerate(windows):
                sent = d.predict(w, pats)
                print(f"{name}: window {w}: sent {sent} ({len(pats)} in the window)", flush=True)
            fed = START + len(windows) * WINDOW + dt.timedelta(days=1)  # outcomes arrive after the last window
            d.feedback([p for ws in windows for p in ws], fed)
        reports = {
            "before_outcomes": monitor_report(
                folder, WINDOW, settings=settings, calibration=calib, as_of=fed - dt.timedelta(hours=1)
            ),
            "after_outcomes": monitor_report(folder, WINDOW, settings=settings, calibration=calib),
        }
        out = args.results / name
        for when, rep in reports.items():
            write_json_atomic(out / f"{when}.json", rep)
        write_monitor_page(reports["after_outcomes"], out / "page")
        fired = sorted({a["metric"] for a in reports["before_outcomes"]["alerts"]})
        must, may = EXPECTED[name]
        keys = ("window", "volume", "estimated_auroc", "estimated_auroc_lo", "estimated_auroc_hi", "auroc")
        summary["streams"][name] = {
            "predictions": reports["after_outcomes"]["predictions"],
            "alerts_before_outcomes": fired,
            "alerts_after_outcomes": sorted({a["metric"] for a in reports["after_outcomes"]["alerts"]}),
            "must_fire": must,
            "may_fire": may,
            "missing": sorted(set(must) - set(fired)),
            "unexpected": sorted(set(fired) - set(must) - set(may)),
            "windows": [{k: w.get(k) for k in keys} for w in reports["after_outcomes"]["windows"]],
        }
        write_json_atomic(args.results / "summary.json", summary)
        print(
            f"{name}: alerts {fired}; missing {summary['streams'][name]['missing']}, unexpected "
            f"{summary['streams'][name]['unexpected']}",
            flush=True,
        )
    shutil.copy(calib, args.results / "calibration_predictions.jsonl")


if __name__ == "__main__":
    main()
