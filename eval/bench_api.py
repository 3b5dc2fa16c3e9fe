"""Benchmark: POST /v1/recommendations over HTTP, with and without LLM reranking.

    .venv/bin/python -m eval.bench_api [--clients 16] [--requests 400] [--rerank-requests 48]
                                       [--seconds 120] [--rerank-seconds 300]

A real uvicorn server (its own process, the demo catalogue in a temporary data dir, the
default models) on a loopback port; 16 concurrent clients (asyncio + httpx) send
recommendation requests for the demo users until the request count or the time budget is
reached. Reported per mode: requests/s, p50/p99 latency, errors and degraded answers.

Service overhead: the same requests from ONE client (no queueing) against the bare calls
in this process — `recommend()` without HTTP, and the model stage alone (the reranker's
`rank` for LLM modes; retrieval for `none`) — as ratios of p50 latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from service.application import Application
from service.config import Settings
from service.llm.prepare import prepare_model
from service.recommend import rank_shortlist, shortlist

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEMO = REPO / "service" / "demo"
USERS = ["u-alice", "u-bob", "u-carol", "u-dan", "u-erin", "u-frank", "u-grace", "u-heidi"]
KEY = "bench-key"


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_data(data_dir: Path) -> Path:
    """Demo catalogue ingested and indexed; returns the prepared default LLM folder."""
    app = Application(Settings(data_dir=data_dir))
    app.ingest(DEMO / "products.jsonl", "products")
    app.ingest(DEMO / "interactions.jsonl", "interactions")
    app.sync_index()
    return prepare_model("smollm2", settings=Settings(data_dir=REPO / "var"))


class Server:
    def __init__(self, data_dir: Path, llm_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "RECSMITH_DATA_DIR": str(data_dir),
            "RECSMITH_LLM_MODEL": str(llm_path),
            "RECSMITH_API_KEYS": json.dumps([KEY]),
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             "--no-access-log"],
            cwd=REPO, env=env,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 600) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                r = httpx.get(self.url + "/readyz", timeout=5)
                body = r.json()
                if body.get("ready") and body["checks"]["llm"].get("state") != "loading":
                    return body
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError("server not ready in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def body_for(i: int, rerank: str, k: int) -> dict[str, Any]:
    return {"user_id": USERS[i % len(USERS)], "k": k, "rerank": rerank}


async def load(url: str, rerank: str, clients: int, n: int, seconds: float, k: int) -> dict:
    latencies: list[float] = []
    errors = degraded = 0
    counter = iter(range(n))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-Key": KEY}, timeout=600, limits=limits
    ) as http:

        async def worker() -> None:
            nonlocal errors, degraded
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/recommendations", json=body_for(i, rerank, k))
                    ok = r.status_code == 200
                    if ok and r.json().get("degraded"):
                        degraded += 1
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "rerank": rerank,
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "degraded": degraded,
        "wall_s": round(wall, 2),
        "rps": round(len(latencies) / wall, 2) if wall else 0.0,
        "p50_ms": round(pct(latencies, 50) * 1000, 1),
        "p99_ms": round(pct(latencies, 99) * 1000, 1),
    }


def single_client(url: str, rerank: str, n: int, k: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=600) as http:
        for i in range(n):
            t0 = time.perf_counter()
            r = http.post("/v1/recommendations", json=body_for(i, rerank, k))
            r.raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


def bare_calls(data_dir: Path, llm_path: Path, rerank: str, n: int, k: int) -> dict[str, Any]:
    """The same work in this process: Application.recommend() without HTTP, and the model
    stage alone (service.recommend.rank_shortlist on a shortlist made beforehand)."""
    app = Application(Settings(data_dir=data_dir, llm_model=str(llm_path)))
    app.sync_index()
    pipeline, stage = [], []
    for i in range(n + 1):  # the first call warms up
        user = USERS[i % len(USERS)]
        t0 = time.perf_counter()
        app.recommend(user_id=user, k=k, rerank=rerank)
        dt_pipe = time.perf_counter() - t0
        t0 = time.perf_counter()
        sl = shortlist(app.engine, user_id=user, k=k)
        dt_stage = time.perf_counter() - t0
        if rerank != "none":
            t0 = time.perf_counter()
            rank_shortlist(app.engine, sl, rerank, llm=app.ranker_llm)
            dt_stage = time.perf_counter() - t0
        if i:
            pipeline.append(dt_pipe)
            stage.append(dt_stage)
    return {
        "model_stage": "rank_shortlist" if rerank != "none" else "retrieval (shortlist)",
        "recommend_p50_ms": round(statistics.median(pipeline) * 1000, 2),
        "model_stage_p50_ms": round(statistics.median(stage) * 1000, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        data_dir = work / "data"
        llm_path = prepare_data(data_dir)
        server = Server(data_dir, llm_path)
        try:
            ready = server.wait_ready()
            modes = [("none", args.requests, args.seconds)]
            modes += [(m, args.rerank_requests, args.rerank_seconds) for m in args.rerank_modes]
            # Warm-up: the first model call of each mode pays for lazy loading.
            for mode, _, _ in modes:
                single_client(server.url, mode, 2, args.k)
            results = []
            for mode, n, secs in modes:
                res = asyncio.run(load(server.url, mode, args.clients, n, secs, args.k))
                one = single_client(server.url, mode, args.single, args.k)
                res["single_client_p50_ms"] = round(statistics.median(one) * 1000, 2)
                results.append(res)
        finally:
            server.stop()
        for res in results:  # bare calls after the server is gone: no CPU contention
            bare = bare_calls(data_dir, llm_path, res["rerank"], args.single, args.k)
            res.update(bare)
            res["overhead_vs_recommend"] = round(
                res["single_client_p50_ms"] / bare["recommend_p50_ms"], 2
            )
            res["overhead_vs_model_stage"] = round(
                res["single_client_p50_ms"] / bare["model_stage_p50_ms"], 2
            )
            res["overhead_ms"] = round(res["single_client_p50_ms"] - bare["recommend_p50_ms"], 2)
        return {
            "date": date.today().isoformat(),
            "command": command_line(args),
            "machine": {
                "cpus": os.cpu_count(),
                "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "llm": ready["checks"]["llm"].get("model_id"),
            "k": args.k,
            "results": results,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def command_line(args: argparse.Namespace) -> str:
    """The full command with every effective option, so a rerun needs nothing else."""
    return (
        f".venv/bin/python -m eval.bench_api --clients {args.clients} "
        f"--requests {args.requests} --seconds {args.seconds:g} "
        f"--rerank-requests {args.rerank_requests} --rerank-seconds {args.rerank_seconds:g} "
        f"--rerank-modes {' '.join(args.rerank_modes)} --single {args.single} -k {args.k}"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# API benchmark — {report['date']}",
        "",
        f"`{report['command']}`",
        "",
        f"POST /v1/recommendations (k={report['k']}, demo users) against a real uvicorn "
        f"server on loopback; LLM `{report['llm']}`; {report['machine']['cpus']} CPUs, load "
        f"average at the end {report['machine']['load_avg_at_end']} (a shared machine: "
        "absolute numbers are noisy, ratios less so).",
        "",
        "| rerank | clients | requests | errors | degraded | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['rerank']} | {r['clients']} | {r['requests']} | {r['errors']} | "
            f"{r['degraded']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} |"
        )
    lines += [
        "",
        "Service overhead, one client (no queueing), p50:",
        "",
        "| rerank | HTTP ms | recommend() ms | model stage | model stage ms | "
        "HTTP / recommend() | HTTP / model stage |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['rerank']} | {r['single_client_p50_ms']} | {r['recommend_p50_ms']} | "
            f"{r['model_stage']} | {r['model_stage_p50_ms']} | {r['overhead_vs_recommend']} | "
            f"{r['overhead_vs_model_stage']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=400, help="without reranking")
    ap.add_argument("--rerank-requests", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=120, help="time budget without reranking")
    ap.add_argument("--rerank-seconds", type=float, default=300)
    ap.add_argument("--rerank-modes", nargs="*", default=["verbalizer"])
    ap.add_argument("--single", type=int, default=8, help="single-client requests per mode")
    ap.add_argument("-k", "--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{report['date']}-api"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
