"""Load on `icl serve`: throughput and p50/p99 latency at 1, 4, 16 and 64 concurrent clients, with and without
micro-batching. Bounded and loopback only: the script starts the server itself on 127.0.0.1, sends a fixed
number of requests per level (one patient each) and stops a level at its time limit.

    .venv/bin/python benchmarks/serve_load.py                         # embedded SmolLM2, zero-shot
    .venv/bin/python benchmarks/serve_load.py --k 2 --requests 64
    .venv/bin/python benchmarks/serve_load.py --quick --model PATH    # seconds, for the smoke test

Both servers get the same patients (test split of the `make demo` cohort) and the
same settings; only ``--batching`` differs. Writes serve_load.csv and .png.

``--overload`` asks another question: more queued work than the server can do, and clients that give up.
``--overload-clients`` clients send requests back to back for ``--overload-s`` seconds; a quarter of them
give up after ``--give-up-s`` (and disconnect); a refused client waits for Retry-After (at most 2 s). The same load runs against a server with a bounded queue
(``--max-queue``) and one with an effectively unbounded queue; writes serve_overload.csv: for each, the
latency of admitted requests, how fast refused requests were told (503 + Retry-After), how many patients the
server dropped because their client had gone, and throughput.

    .venv/bin/python benchmarks/serve_load.py --overload                 # about 2 minutes on 2 cores

``--monitor`` measures what ``icl serve --monitor-dir`` costs: two servers with the same settings, one writing the
monitor log, run side by side; requests alternate between them in blocks (``--rounds`` rounds of ``--requests``
requests, 1 client and 4 clients), so both see the same machine state. Writes serve_monitor.csv: latency p50, mean
and p99 per server and level, and the ratio monitored / plain; plus the in-process cost of one log record.

    .venv/bin/python benchmarks/serve_load.py --monitor --requests 32    # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, demo_cohort, machine, write_csv  # noqa: E402

from icl_toolkit.serve.launch import LocalServer, ServerStartError, start_local_server  # noqa: E402

LEVELS = (1, 4, 16, 64)


def _start(args: argparse.Namespace, pool: Path, batching: bool, extra: tuple[str, ...] = ()) -> LocalServer:
    opts = ["--pool", str(pool), "--model", args.model, "--query-tokens", "160", "--demo-tokens", "100",
            "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning",
            "--batching" if batching else "--no-batching"]
    if args.batch_size:
        opts += ["--batch-size", str(args.batch_size)]
    try:
        return start_local_server([*opts, *extra])
    except ServerStartError as exc:
        raise SystemExit(str(exc)) from None


async def _level(base: str, bodies: list[dict], clients: int, limit_s: float, keep: bool = False) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    stop_at = time.perf_counter() + limit_s

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t = time.perf_counter()
            r = await http.post(base + "/v1/predict", json=body, timeout=limit_s + 60)
            latencies.append(time.perf_counter() - t)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    extra = {"latencies": latencies} if keep else {}
    return extra | {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 3),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1)}


async def _overload(base: str, bodies: list[dict], clients: int, seconds: float, give_up_s: float) -> dict:
    """Closed-loop clients for ``seconds``: each sends one request after another; every fourth client gives up
    on a request after ``give_up_s`` and disconnects. Returns latencies by outcome."""
    import httpx

    admitted: list[float] = []
    refused: list[float] = []
    gave_up = errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal gave_up, errors
        impatient = i % 4 == 0
        async with httpx.AsyncClient() as http:  # one connection per client, so giving up closes it
            n = 0
            while time.perf_counter() < stop_at:
                body = bodies[(i + n * clients) % len(bodies)]
                n += 1
                t = time.perf_counter()
                try:
                    r = await http.post(base + "/v1/predict", json=body, timeout=give_up_s if impatient else 600)
                except httpx.TimeoutException:
                    gave_up += 1
                    continue
                took = time.perf_counter() - t
                if r.status_code == 200:
                    admitted.append(took)
                elif r.status_code == 503:
                    refused.append(took)
                    await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 2.0))  # Retry-After, at most 2 s
                else:
                    errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - start
    info = httpx.get(base + "/v1/info", timeout=10).json()["queue"]

    def pct(xs: list[float], q: float) -> float | None:
        return round(float(np.percentile(np.array(xs) * 1000, q)), 1) if xs else None

    return {"clients": clients, "seconds": round(wall, 1), "admitted": len(admitted), "refused": len(refused),
            "gave_up": gave_up, "errors": errors, "dropped_patients": info["dropped"],
            "admitted_per_s": round(len(admitted) / wall, 3), "admitted_p50_ms": pct(admitted, 50),
            "admitted_p99_ms": pct(admitted, 99), "admitted_max_ms": pct(admitted, 100),
            "refused_p50_ms": pct(refused, 50), "refused_p99_ms": pct(refused, 99)}


def _run_overload(args: argparse.Namespace, pool_path: Path, bodies: list[dict], where: str) -> None:
    rows = []
    for queue in (args.max_queue, 100_000):
        with _start(args, pool_path, True, ("--max-queue", str(queue))) as server:
            asyncio.run(_level(server.base, bodies[:2], 1, args.limit_s))  # warm-up
            r = asyncio.run(_overload(server.base, bodies, args.overload_clients, args.overload_s, args.give_up_s))
        rows.append({"max_queue": queue if queue < 100_000 else "unbounded", **r, "give_up_s": args.give_up_s,
                     "k": args.k, "model": args.model, "machine": where})
        print(f"max_queue={rows[-1]['max_queue']!s:9s} admitted {r['admitted']:4d} (p50 {r['admitted_p50_ms']} ms, "
              f"p99 {r['admitted_p99_ms']} ms) refused {r['refused']:4d} (p50 {r['refused_p50_ms']} ms, p99 {r['refused_p99_ms']} ms) gave up "
              f"{r['gave_up']:3d}, dropped {r['dropped_patients']} patients, errors {r['errors']}", flush=True)
    out = args.out.with_name(args.out.stem.replace("serve_load", "serve_overload") + ".csv")
    write_csv(out, rows)
    print(f"wrote {out}")


def _record_cost(test: list, tmp: Path, pool: list) -> float:
    """Microseconds to pseudonymise and append one prediction record (MonitorLog.record_predictions), in-process,
    with the pool's codes known (each record names its common codes and counts the unseen ones)."""
    from icl_toolkit.evaluation.monitor import MonitorLog

    log = MonitorLog(tmp / "cost", b"k" * 32, model={"model": "bench"}, pool=pool)
    preds = [{"probability": 0.2, "model_id": "m", "prompt_hash": "sha256:0", "template": "zero_shot",
              "demos": [{"patient_id": p.patient_id} for p in test[:4]]} for _ in test]
    start = time.perf_counter()
    rounds = max(1, 2000 // len(test))
    for _ in range(rounds):
        log.record_predictions(test, preds)
    log.close()
    return (time.perf_counter() - start) / (rounds * len(test)) * 1e6


def _run_monitor(args: argparse.Namespace, pool_path: Path, bodies: list[dict], test: list, where: str,
                 tmp: Path) -> None:
    latencies: dict[tuple[str, int], list[float]] = {}
    with _start(args, pool_path, True) as plain, \
            _start(args, pool_path, True, ("--monitor-dir", str(tmp / "monitor"))) as watched:
        plain_base, watched_base = plain.base, watched.base
        for base in (plain_base, watched_base):
            asyncio.run(_level(base, bodies[:2], 1, args.limit_s))  # warm-up
        for r in range(args.rounds):
            for clients in (1, 4):
                order = [("plain", plain_base), ("monitored", watched_base)]
                for name, base in order if r % 2 == 0 else order[::-1]:
                    got = asyncio.run(_level(base, bodies, clients, args.limit_s, keep=True))
                    latencies.setdefault((name, clients), []).extend(got["latencies"])
                    print(f"round {r} {name:9s} clients={clients} p50 {got['p50_ms']:.1f} ms", flush=True)
    logged = len((tmp / "monitor" / "predictions.jsonl").read_text().splitlines())
    from icl_toolkit.data.cohort import read_cohort

    cost_us = _record_cost(test, tmp, read_cohort(pool_path))
    rows = []
    for clients in (1, 4):
        a = np.array(latencies[("plain", clients)]) * 1000
        b = np.array(latencies[("monitored", clients)]) * 1000
        rows.append({"clients": clients, "requests_each": len(a), "plain_p50_ms": round(float(np.median(a)), 1),
                     "monitored_p50_ms": round(float(np.median(b)), 1),
                     "plain_mean_ms": round(float(a.mean()), 1), "monitored_mean_ms": round(float(b.mean()), 1),
                     "plain_p99_ms": round(float(np.percentile(a, 99)), 1),
                     "monitored_p99_ms": round(float(np.percentile(b, 99)), 1),
                     "ratio_p50": round(float(np.median(b) / np.median(a)), 4),
                     "ratio_mean": round(float(b.mean() / a.mean()), 4),
                     "log_records": logged, "record_cost_us": round(cost_us, 1), "k": args.k, "model": args.model,
                     "machine": where})
        print(f"clients={clients}: p50 {rows[-1]['plain_p50_ms']} ms plain, {rows[-1]['monitored_p50_ms']} ms "
              f"monitored (x{rows[-1]['ratio_p50']}); mean x{rows[-1]['ratio_mean']}", flush=True)
    print(f"one log record costs {cost_us:.1f} us in-process; {logged} records logged", flush=True)
    out = args.out.with_name(args.out.stem.replace("serve_load", "serve_monitor") + ".csv")
    write_csv(out, rows)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--k", type=int, default=0, help="demonstrations per patient")
    ap.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    ap.add_argument("--limit-s", type=float, default=300, help="time limit per level")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=10)
    ap.add_argument("--batch-size", type=int, default=None, help="hf backend prompts per forward pass")
    ap.add_argument("--quick", action="store_true", help="levels 1 and 4, 8 requests each (overload: 6 s)")
    ap.add_argument("--overload", action="store_true", help="the overload run instead of the levels (see above)")
    ap.add_argument("--max-queue", type=int, default=8, help="overload: the bounded server's queue (patients)")
    ap.add_argument("--overload-clients", type=int, default=32)
    ap.add_argument("--overload-s", type=float, default=45.0)
    ap.add_argument("--give-up-s", type=float, default=3.0, help="overload: when impatient clients give up")
    ap.add_argument("--monitor", action="store_true", help="monitoring overhead: with and without --monitor-dir")
    ap.add_argument("--rounds", type=int, default=4, help="monitor: alternating rounds per level")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load.csv")
    args = ap.parse_args()
    levels = (1, 4) if args.quick else LEVELS
    n = 8 if args.quick else args.requests
    where = machine()
    print(f"machine: {where}", flush=True)

    from icl_toolkit.data.cohort import patient_to_dict, write_cohort
    pool, test = demo_cohort(quick=args.quick)
    bodies = [{"patients": [patient_to_dict(test[i % len(test)])],
               "options": {"k": args.k, "demos": "label" if args.k else "none"}} for i in range(n)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pool_path = Path(tmp) / "pool.jsonl"
        write_cohort(pool, pool_path)
        if args.monitor:
            if args.quick:
                args.rounds = 2
            _run_monitor(args, pool_path, bodies, test, where, Path(tmp))
            return
        if args.overload:
            if args.quick:
                args.overload_s, args.overload_clients, args.give_up_s = 6.0, 12, 1.0
            _run_overload(args, pool_path, bodies, where)
            return
        for batching in (False, True):
            with _start(args, pool_path, batching) as server:
                asyncio.run(_level(server.base, bodies[:2], 1, args.limit_s))  # warm-up
                for clients in levels:
                    r = asyncio.run(_level(server.base, bodies, clients, args.limit_s))
                    rows.append({"batching": batching, **r, "k": args.k, "model": args.model,
                                 "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "machine": where})
                    print(f"batching={batching!s:5s} clients={clients:3d} {r['requests_per_s']:8.2f} req/s "
                          f"p50 {r['p50_ms']:8.1f} ms p99 {r['p99_ms']:8.1f} ms errors {r['errors']}", flush=True)
    one = next(r["requests_per_s"] for r in rows if not r["batching"] and r["clients"] == 1)
    for r in rows:
        r["x_one_at_a_time"] = round(r["requests_per_s"] / one, 2)
    write_csv(args.out, rows)
    _plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png').name}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for batching in (False, True):
        sub = [r for r in rows if r["batching"] == batching]
        label = "micro-batching" if batching else "one at a time"
        axes[0].plot([r["clients"] for r in sub], [r["requests_per_s"] for r in sub], marker="o", label=label)
        axes[1].plot([r["clients"] for r in sub], [r["p99_ms"] for r in sub], marker="o", label=f"{label} p99")
        axes[1].plot([r["clients"] for r in sub], [r["p50_ms"] for r in sub], marker=".", ls="--",
                     label=f"{label} p50")
    axes[0].set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title="throughput")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="latency")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
