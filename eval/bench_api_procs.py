"""Recommendations per second with 2 API processes against 1 (issue 14 item 5).

    .venv/bin/python -m eval.bench_api_procs [--clients 8] [--seconds 60] [--rounds 2]

`recsmith serve --workers 1` and `--workers 2` over the same demo data directory (MiniLM
encoder; the LLM is an OpenAI URL nobody listens on, so no worker loads a model: the
requests are rerank=none without a headline — retrieval, filters and the HTTP layer),
measured one after the other in alternating rounds (1, 2, 1, 2, …) so a change in the
machine's load hits both; each round starts its server, warms it with a few requests,
then `--clients` concurrent clients (asyncio + httpx, eval/bench_api.py's load loop) post
/v1/recommendations for `--seconds`. Printed side by side: requests/s, p50/p99 and the
ratio of the medians over rounds. On a machine with 2 cores (shared) the ratio is bounded
by those cores: two processes can at most use both, and the load generator takes its share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from eval.bench_api import load
from eval.bench_failover import KEY, RESULTS, Api, free_port, prepare_data, service_env


def measure(env: dict[str, str], log: Path, workers: int, clients: int, seconds: float) -> dict:
    api = Api(env, log, workers=workers)  # a new log each: readiness is read from it
    try:
        api.wait_ready(workers=workers)
        with httpx.Client(base_url=api.url, headers={"X-API-Key": KEY}, timeout=120) as http:
            for i in range(2 * workers * clients):  # every worker's first requests
                body = {"user_id": "u-alice" if i % 2 else "u-bob", "k": 10, "rerank": "none"}
                http.post("/v1/recommendations", json=body).raise_for_status()
        out: dict[str, Any] = asyncio.run(load(api.url, "none", clients, 10**9, seconds, 10))
    finally:
        api.stop()
    out["workers"] = workers
    out["load_avg"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "2026-11-30-api-procs.json")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-procs-"))
    data = work / "data"
    print(f"work dir {work}; load {os.getloadavg()}", flush=True)
    prepare_data(data)
    env = service_env(
        data,
        [],
        RECSMITH_LLM_BACKEND="openai",
        RECSMITH_LLM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
    )
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for workers in (1, 2):
            log = work / f"api-r{r + 1}-w{workers}.log"
            res = measure(env, log, workers, args.clients, args.seconds)
            runs.append(res)
            print(f"round {r + 1} workers={workers}: {res['rps']} req/s, p50 {res['p50_ms']} ms, "
                  f"p99 {res['p99_ms']} ms, errors {res['errors']}, load {res['load_avg']}",
                  flush=True)  # fmt: skip
    med = {w: statistics.median(x["rps"] for x in runs if x["workers"] == w) for w in (1, 2)}
    ratio = med[2] / med[1] if med[1] else float("nan")
    print(f"\nrecommendations/s (median of {args.rounds} rounds, {args.clients} clients, "
          f"rerank=none): 1 process {med[1]:.1f} | 2 processes {med[2]:.1f} | "
          f"ratio {ratio:.2f}x  (cores: {os.cpu_count()})")  # fmt: skip
    report = {"runs": runs, "median_rps": med, "ratio": round(ratio, 3), "cpus": os.cpu_count(),
              "clients": args.clients, "seconds": args.seconds, "when": time.time()}  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
