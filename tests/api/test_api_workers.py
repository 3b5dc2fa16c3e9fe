"""`recsmith serve --workers 2`: two real API processes on one port and one database, with
Prometheus multiprocess metrics (any worker's /metrics answers for all of them) and a
killed worker's live gauge dropped.

The service runs as a real subprocess (the `recsmith` script, uvicorn's supervisor, two
spawned workers) over a copy of the demo data directory; the LLM is an OpenAI-compatible
URL nobody listens on, so no worker loads a model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.api.support import free_port, fresh_copy

RECSMITH = Path(sys.executable).parent / "recsmith"


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path, prom: Path) -> None:
        self.proc, self.url, self.log, self.prom = proc, url, log, prom

    def workers(self) -> list[int]:
        out = []
        for c in psutil.Process(self.proc.pid).children():
            try:  # uvicorn spawns its workers through multiprocessing.spawn
                if c.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(c.cmdline()):
                    out.append(c.pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def started(self) -> int:
        return self.log.read_text(errors="replace").count("Application startup complete")

    def wait_started(self, n: int, timeout_s: float = 300) -> None:
        end = time.monotonic() + timeout_s
        while self.started() < n:
            if self.proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"serve --workers: {self.started()} of {n} workers started\n"
                            + self.log.read_text(errors="replace")[-3000:])  # fmt: skip
            time.sleep(0.2)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


def _in_flight_by_pid(folder: Path) -> dict[int, float]:
    """Each worker's own in-flight gauge, read from its file."""
    out = {}
    for f in folder.glob("gauge_livesum_*.db"):
        pid = int(f.stem.rsplit("_", 1)[1])
        out[pid] = sum(v for key, v, _ts, _pos in MmapedDict.read_all_values_from_file(str(f))
                       if "recsmith_http_requests_in_flight" in key)  # fmt: skip
    return out


def _requests_by_pid(folder: Path, method: str, route: str) -> dict[int, float]:
    """Each worker's own request count for one route, read from its counter file."""
    out = {}
    for f in folder.glob("counter_*.db"):
        pid = int(f.stem.rsplit("_", 1)[1])
        out[pid] = sum(
            v
            for key, v, _ts, _pos in MmapedDict.read_all_values_from_file(str(f))
            if json.loads(key)[1] == "recsmith_http_requests_total"
            and f'"method": "{method}"' in key
            and f'"route": "{route}"' in key
        )
    return out


@pytest.fixture(scope="module")
def served(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = fresh_copy(demo_dir, tmp_path_factory, "workers")
    prom = data.parent / "prom"
    log = data.parent / "serve.log"
    port = free_port()
    env = {
        **os.environ,
        "RECSMITH_DATA_DIR": str(data),
        "RECSMITH_LLM_BACKEND": "openai",
        "RECSMITH_LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "RECSMITH_API_KEYS": "",
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
    }
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(RECSMITH), "serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    s = Served(proc, f"http://127.0.0.1:{port}", log, prom)
    try:
        s.wait_started(2)
        yield s
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for pid in s.workers():
                os.kill(pid, signal.SIGKILL)
            proc.kill()


HEALTHZ = ("recsmith_http_requests_total", (("method", "GET"), ("route", "/healthz"),
                                            ("status", "200")))  # fmt: skip


def test_metrics_count_every_workers_requests(served: Served) -> None:
    assert len(served.workers()) == 2
    before = served.metrics().get(HEALTHZ, 0.0)
    for _ in range(40):  # a new connection each: the workers share the listening socket
        assert httpx.get(f"{served.url}/healthz", timeout=30).status_code == 200
    # Any worker may answer the scrape; each answers for both.
    for _ in range(6):
        assert served.metrics()[HEALTHZ] == before + 40
    files = {f.name for f in served.prom.glob("counter_*.db")}
    assert {f"counter_{pid}.db" for pid in served.workers()} <= files


def test_a_killed_workers_in_flight_requests_stop_counting(served: Served) -> None:
    # A request stuck in a worker: headers sent, the promised body never finished.
    host, port = served.url.removeprefix("http://").split(":")
    stuck = socket.create_connection((host, int(port)))
    try:
        stuck.sendall(b"POST /v1/products HTTP/1.1\r\nHost: x\r\ncontent-type: application/json"
                      b"\r\ncontent-length: 1000\r\n\r\n[{")  # fmt: skip
        end = time.monotonic() + 30
        while not any(_in_flight_by_pid(served.prom).values()):
            assert time.monotonic() < end, "the stuck request never reached a worker"
            time.sleep(0.1)
        victim = next(p for p, v in _in_flight_by_pid(served.prom).items() if v)
        assert victim in served.workers()
        counted = served.metrics()[HEALTHZ]
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + 30
        while victim in served.workers():
            assert time.monotonic() < end
            time.sleep(0.1)
        # The scrape is the one request in flight now; the dead worker's request is gone,
        # its counters stay (the requests it served did happen). A worker decrements its
        # gauge after its response is sent, so the previous scrape may still count for a
        # moment on a loaded machine: poll briefly, the stuck request must never count.
        end = time.monotonic() + 10
        while (m := served.metrics())[("recsmith_http_requests_in_flight", ())] != 1:
            assert time.monotonic() < end, m[("recsmith_http_requests_in_flight", ())]
            time.sleep(0.2)
        assert m[HEALTHZ] == counted
        assert not (served.prom / f"gauge_livesum_{victim}.db").exists()
    finally:
        stuck.close()
    # uvicorn's supervisor starts a new worker; both answer again.
    served.wait_started(3)
    assert len(served.workers()) == 2 and victim not in served.workers()
    assert httpx.get(f"{served.url}/healthz", timeout=30).status_code == 200


KETTLE = {
    "id": "workers-kettle-1",
    "title": "Gooseneck pour-over kettle, 0.9 L, matte black",
    "description": "A slow, precise pour for filter coffee.",
    "category": "Coffee & Tea",
    "price": 49.0,
    "tags": ["kettle", "pour-over"],
}


def _search_until_both_workers_answered(served: Served, present: bool) -> int:
    """Searches (a new connection each) until each worker has answered at least one; every
    answer must agree on whether the kettle is in the catalogue."""
    before = _requests_by_pid(served.prom, "GET", "/v1/products")
    searches = 0
    end = time.monotonic() + 120
    while True:
        hits = httpx.get(f"{served.url}/v1/products", params={"q": "gooseneck kettle"},
                         timeout=60).json()  # fmt: skip
        searches += 1
        assert (KETTLE["id"] in [p["id"] for p in hits["items"]]) is present, searches
        now = _requests_by_pid(served.prom, "GET", "/v1/products")
        answered = {pid for pid in served.workers() if now.get(pid, 0) > before.get(pid, 0)}
        if answered == set(served.workers()):
            return searches
        assert time.monotonic() < end, f"only {answered} answered in {searches} searches"


def test_a_write_through_one_worker_is_served_by_every_worker(served: Served) -> None:
    """No per-process index drift: the catalogue's change log in the shared database brings
    each worker's in-memory index in step before it serves (service/index_state.py)."""
    r = httpx.post(f"{served.url}/v1/products", json={"products": [KETTLE]}, timeout=120)
    assert r.status_code == 200 and r.json()["inserted"] == 1, r.text
    _search_until_both_workers_answered(served, present=True)
    assert httpx.delete(f"{served.url}/v1/products/{KETTLE['id']}", timeout=60).status_code == 204
    _search_until_both_workers_answered(served, present=False)
