"""A single product upsert through the served API (`POST /v1/products`, HTTP end to end), the
float encoder against e5-small+int8, side by side: one `recsmith serve` per encoder, each on
its own copy of one loaded demo data dir, requests interleaved (the order alternating), the
demo's real product texts with a new title each time (so each call encodes one text).

    recsmith demo load                       # once, into RECSMITH_DATA_DIR (default var/)
    python -m eval.bench_upsert_served --data var --upserts 40

The int8 server re-encodes the copied catalogue at its start (another model id); timing
starts once both servers and their LLMs are ready and a few seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CELLS = {"float": "e5-small", "int8": "e5-small+int8"}


def _call(port: int, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 600) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {proc.returncode}")
        try:
            body = _call(port, "/readyz")
            if body["ready"] and body["checks"]["llm"].get("state") == "ready":
                return body["checks"]["encoder"]
        except OSError:
            pass
        time.sleep(2)
    raise SystemExit(f"the server on port {port} was not ready in {timeout_s:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("var"), help="a data dir with the demo")
    ap.add_argument("--upserts", type=int, default=40)
    ap.add_argument("--port", type=int, default=8941, help="the first of two ports")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rs-upsert-served-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports = {name: args.port + i for i, name in enumerate(CELLS)}
    recsmith = str(Path(sys.executable).with_name("recsmith"))  # the venv's entry point
    try:
        for name, model in CELLS.items():
            d = work / name
            d.mkdir()
            for part in ("recsmith.db", "index", "cache"):
                src = args.data / part
                if src.is_dir():
                    shutil.copytree(src, d / part)
                elif src.exists():
                    shutil.copy2(src, d / part)
            env = {**os.environ, "RECSMITH_DATA_DIR": str(d), "RECSMITH_ENCODER_MODEL": model}
            env.setdefault("RECSMITH_MODELS_DIR", str(args.data / "models"))
            procs[name] = subprocess.Popen(
                [recsmith, "serve", "--port", str(ports[name])],
                env=env,
                stdout=(work / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        encoders = {name: _wait_ready(ports[name], procs[name]) for name in CELLS}
        time.sleep(10)  # start-up work (the int8 re-encode, LLM warm-up) has settled
        items = _call(ports["float"], f"/v1/products?limit={args.upserts}")["items"]
        lat: dict[str, list[float]] = {name: [] for name in CELLS}
        for i, item in enumerate(items[: args.upserts]):
            product = {k: v for k, v in item.items() if k != "score"}
            product["title"] = f"{product['title']} (v{time.time_ns() % 10**6})"
            order = list(CELLS) if i % 2 == 0 else list(CELLS)[::-1]
            for name in order:
                t = time.perf_counter()
                out = _call(ports[name], "/v1/products", {"products": [product]})
                lat[name].append((time.perf_counter() - t) * 1000)
                assert out["index"]["encoded"] == 1, out  # the call encoded its product
        res: dict[str, Any] = {
            name: {
                "model_id": encoders[name].get("model_id"),
                "runtime": encoders[name].get("runtime"),
                "p50_ms": round(statistics.median(v), 1),
                "p90_ms": round(sorted(v)[int(0.9 * len(v))], 1),
            }
            for name, v in lat.items()
        }
        res["int8_over_float_p50"] = round(
            statistics.median(lat["int8"]) / statistics.median(lat["float"]), 2
        )
        res["upserts"] = len(lat["float"])
        res["loadavg"] = os.getloadavg()
        print(json.dumps(res))
        if args.out:
            args.out.write_text(json.dumps(res, indent=1) + "\n")
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
