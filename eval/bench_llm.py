"""Benchmark: generation throughput of the in-process backend vs a vLLM server, same model.

    .venv/bin/python -m eval.bench_llm [--n 8] [--max-tokens 32]
        [--vllm-url http://127.0.0.1:8008/v1 | --no-vllm]

Measures, on the prepared default model (or --model), greedy, chat prompts that ask for a
product description (prompts/llm_bench.j2 over the demo catalogue):
- in-process: one request (tokens/s), n requests one after another, n prompts in one
  batched generate() call;
- vLLM: one request, n concurrent requests (threads; the server batches them).
Without --vllm-url it starts its own server on a free port (VLLMServer, ~65-130 s) and
stops it after. Prints the ratios and writes eval/results/<date>-llm.json and .md.
The in-process and vLLM halves run in turn, so on a shared machine both see similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

from service.config import Settings, get_settings
from service.llm.base import LLM, GenParams, Prompt
from service.llm.openai_backend import OpenAILLM
from service.llm.prepare import resolve_model_path
from service.llm.transformers_backend import TransformersLLM
from service.llm.vllm_server import VLLMServer, free_port
from service.prompts import render

RESULTS = Path(__file__).resolve().parent / "results"
DEMO = Path(__file__).resolve().parent.parent / "service" / "demo" / "products.jsonl"


def prompts(n: int) -> list[Prompt]:
    products: list[dict[str, Any]] = []
    if DEMO.exists():
        for line in DEMO.read_text().splitlines():
            if line.strip():
                p = json.loads(line)
                products.append({k: p.get(k) for k in ("title", "brand", "category", "price")})
            if len(products) >= n:
                break
    while len(products) < n:  # no demo catalogue: numbered placeholders still work
        products.append({"title": f"Item {len(products) + 1}", "category": "General"})
    return [
        [{"role": "user", "content": render("llm_bench", product=p).text}] for p in products[:n]
    ]


def _tok(gens: list[Any]) -> int:
    return sum(g.completion_tokens for g in gens)


def measure(llm: LLM, batch: list[Prompt], params: GenParams, concurrent: bool) -> dict[str, Any]:
    """single request, then n sequential (in-process) or n concurrent (server)."""
    llm.generate([batch[0]], GenParams(max_tokens=2))  # warm-up: first-call costs aside
    t0 = time.perf_counter()
    single = llm.generate([batch[0]], params)
    t_single = time.perf_counter() - t0
    out: dict[str, Any] = {
        "single_tokens": _tok(single),
        "single_s": round(t_single, 3),
        "single_tok_s": round(_tok(single) / t_single, 2),
    }
    if concurrent:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            gens = [g for r in pool.map(lambda p: llm.generate([p], params), batch) for g in r]
        dt = time.perf_counter() - t0
        out.update(concurrent_tokens=_tok(gens), concurrent_s=round(dt, 3))
        out["concurrent_tok_s"] = round(_tok(gens) / dt, 2)
        return out
    t0 = time.perf_counter()
    gens = [llm.generate([p], params)[0] for p in batch]
    dt = time.perf_counter() - t0
    out.update(sequential_tokens=_tok(gens), sequential_s=round(dt, 3))
    out["sequential_tok_s"] = round(_tok(gens) / dt, 2)
    t0 = time.perf_counter()
    gens = llm.generate(batch, params)
    dt = time.perf_counter() - t0
    out.update(batched_tokens=_tok(gens), batched_s=round(dt, 3))
    out["batched_tok_s"] = round(_tok(gens) / dt, 2)
    return out


def markdown(r: dict[str, Any]) -> str:
    ip, vl = r["inprocess"], r.get("vllm") or {}
    lines = [
        f"# LLM throughput — {r['date']}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Model `{r['model']}`, greedy, chat prompts (prompts/llm_bench.j2), "
        f"max {r['max_tokens']} new tokens, n = {r['n']}. Machine: {r['machine']}.",
        "",
        "| backend | mode | tokens | seconds | tokens/s |",
        "|---|---|---:|---:|---:|",
        f"| in-process | 1 request | {ip['single_tokens']} | {ip['single_s']} | "
        f"{ip['single_tok_s']} |",
        f"| in-process | {r['n']} sequential | {ip['sequential_tokens']} | {ip['sequential_s']} "
        f"| {ip['sequential_tok_s']} |",
        f"| in-process | {r['n']} in one batch | {ip['batched_tokens']} | {ip['batched_s']} | "
        f"{ip['batched_tok_s']} |",
    ]
    if vl:
        lines += [
            f"| vLLM | 1 request | {vl['single_tokens']} | {vl['single_s']} | "
            f"{vl['single_tok_s']} |",
            f"| vLLM | {r['n']} concurrent | {vl['concurrent_tokens']} | {vl['concurrent_s']} "
            f"| {vl['concurrent_tok_s']} |",
        ]
    lines += ["", "Ratios (tokens/s):", ""]
    lines += [f"- {k}: **{v}×**" for k, v in r["ratios"].items()]
    if r.get("note"):
        lines += ["", r["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="requests in the concurrent/batched runs")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model", default="default", help="settings.llm_model for both backends")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in-process; 1 = what vLLM uses on this 2-core box (0 = torch default)",
    )
    ap.add_argument("--vllm-url", default="", help="use this server instead of starting one")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    used = sys.argv[1:] if argv is None else argv
    command = "python -m eval.bench_llm " + " ".join(shlex.quote(a) for a in used)

    base = get_settings()
    model_path = resolve_model_path(base.model_copy(update={"llm_model": args.model}))
    # Benchmark calls are logged like any others, but into a scratch database.
    data = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    s = Settings(data_dir=data, llm_model=model_path, llm_threads=args.threads,
                 llm_timeout_s=300.0)  # fmt: skip
    batch = prompts(args.n)
    params = GenParams(max_tokens=args.max_tokens)

    print(f"in-process: {model_path}", flush=True)
    inproc = measure(TransformersLLM(s), batch, params, concurrent=False)
    print(json.dumps(inproc), flush=True)

    vllm: dict[str, Any] | None = None
    note = ""
    server = None
    if not args.no_vllm:
        url = args.vllm_url
        if not url:
            server = VLLMServer(model_path, port=free_port(), served_name=s.llm_served_name,
                                log_path=data / "vllm.log", startup_timeout_s=420)  # fmt: skip
            t0 = time.perf_counter()
            server.start()
            note = f"vLLM started by the benchmark in {time.perf_counter() - t0:.0f} s. "
            url = server.base_url
        try:
            remote = OpenAILLM(s.model_copy(update={"llm_base_url": url}))
            vllm = measure(remote, batch, params, concurrent=True)
            print(json.dumps(vllm), flush=True)
        finally:
            if server:
                server.stop()

    ratios: dict[str, float] = {}
    if vllm:
        ratios = {
            f"vLLM {args.n} concurrent / in-process {args.n} sequential": round(
                vllm["concurrent_tok_s"] / inproc["sequential_tok_s"], 2
            ),
            f"vLLM {args.n} concurrent / in-process batch of {args.n}": round(
                vllm["concurrent_tok_s"] / inproc["batched_tok_s"], 2
            ),
            "vLLM 1 request / in-process 1 request": round(
                vllm["single_tok_s"] / inproc["single_tok_s"], 2
            ),
        }
    ratios[f"in-process batch of {args.n} / {args.n} sequential"] = round(
        inproc["batched_tok_s"] / inproc["sequential_tok_s"], 2
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1
    result = {
        "date": date.today().isoformat(),
        "command": command,
        "model": Path(model_path).name,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load avg {load:.1f} at end",
        "inprocess": inproc,
        "vllm": vllm,
        "ratios": ratios,
        "note": note.strip(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['date']}-llm"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    for k, v in ratios.items():
        print(f"{k}: {v}x")
    print(f"wrote {stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
