"""Latency of the default writer as a shopper meets it: blurb p50/p95 and chat first token
p50/p95, with the llama.cpp prefix reuse on and off side by side in one run (issue 10's
goals: blurb p50 ≤ 10 s, chat first token p50 ≤ 4 s on 2 cores).

    .venv/bin/python -m eval.bench_words [--profile small] [--n 4] [--threads 0]
        [--budget-s 240] [--out eval/results/2026-11-30-latency.json]

One command, about 3-5 minutes on 2 idle cores (the first run also indexes the demo
catalogue into var/bench-words/, ~1 minute, reused afterwards). Each sample i runs a blurb
(CopyWriter, the served path: prompt, checks, retries; `regenerate`, so the model is called)
and a chat turn (Assistant.stream: query, retrieval, prompt, answer) once with prefix reuse
on and once off, the order alternating between samples so a drift of the machine's load
hits both sides alike. "on" has served one request of each kind before (a running server);
"off" evaluates every prompt from an empty context. The 1-minute load average is recorded
with every request and printed with each figure: on a shared machine the ratio between the
two sides is the measure, the absolute seconds are the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from service.assistant.chat import Assistant
from service.catalog.ingest import ingest_file
from service.config import Settings
from service.copy.tasks import CopyRequest
from service.copy.writer import CopyWriter
from service.db import get_engine
from service.llm.factory import get_llm
from service.recsmith import Recsmith

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "service" / "demo"
DATA = REPO / "var" / "bench-words"
# Blurbs: English and Chinese demo products; chat: first questions of a conversation.
BLURB_PRODUCTS = ["cof-0001", "kit-zh-01", "out-0002", "cof-zh-02", "kit-0007", "lig-zh-01"]
CHAT_QUESTIONS = [
    "a gift for a tea lover",
    "推荐一款咖啡机",
    "a knife for vegetables",
    "适合露营的装备",
    "a lamp for reading in bed",
    "送给爱喝茶的朋友的礼物",
]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 2) if s else float("nan")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _setup(profile: str, threads: int) -> tuple[Any, Any, Any]:

    DATA.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        data_dir=DATA,
        database_url="",
        models_dir=REPO / "var" / "models",
        writer_backend="llamacpp",
        writer_model=profile,
        llm_threads=threads,
    )
    settings.ensure_dirs()
    t0 = time.perf_counter()
    try:
        rs = Recsmith(settings)
        if not rs.store.get_products(BLURB_PRODUCTS[:1]):
            ingest_file(rs.store, DEMO / "products.jsonl", "products")
            ingest_file(rs.store, DEMO / "interactions.jsonl", "interactions")
        rs.sync_index()
    except Exception as e:  # noqa: BLE001 - a data dir from an older schema: start afresh
        print(f"rebuilding {DATA} ({type(e).__name__}); embeddings stay cached", file=sys.stderr)
        for path in DATA.iterdir():
            if path.name != "cache":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

        get_engine.cache_clear()
        rs = Recsmith(settings)
        ingest_file(rs.store, DEMO / "products.jsonl", "products")
        ingest_file(rs.store, DEMO / "interactions.jsonl", "interactions")
        rs.sync_index()
    print(f"index ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    llm = get_llm(settings, role="writer")
    if llm.backend != "llamacpp":
        raise SystemExit(f"profile {profile!r} is not on the llama.cpp backend here")
    writer = CopyWriter(settings, llm=llm, catalog=rs.store)
    assistant = Assistant(rs, llm=llm)
    return llm, writer, assistant


def _blurb(writer: Any, product_id: str) -> dict[str, Any]:

    t0 = time.perf_counter()
    r = writer.generate(CopyRequest(task="blurb", product_id=product_id, regenerate=True))[0]
    return {
        "product": product_id,
        "s": round(time.perf_counter() - t0, 2),
        "attempts": r.attempts,
        "passed": r.passed,
        "failed": r.failed_checks,
        "text": r.text if r.text is not None else f"(refused) {r.generated_text}",
        "prompt_tokens": r.meta.get("prompt_tokens"),
        "completion_tokens": r.meta.get("completion_tokens"),
        "load": _load(),
    }


def _chat(assistant: Any, question: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    first: float | None = None
    final: dict[str, Any] = {}
    for ev in assistant.stream(question):
        if ev["type"] == "token" and first is None:
            first = time.perf_counter() - t0
        elif ev["type"] == "final":
            final = ev
    total = time.perf_counter() - t0
    return {
        "question": question,
        "first_token_s": round(first if first is not None else total, 2),
        "answer_s": round(total, 2),
        "answer": final.get("answer", ""),
        "products": [c["id"] for c in final.get("products", [])],
        "degraded": final.get("degraded"),
        "load": _load(),
    }


def run(profile: str, n: int, threads: int, budget_s: float) -> dict[str, Any]:
    llm, writer, assistant = _setup(profile, threads)
    t = time.perf_counter()
    llm.generate([[{"role": "user", "content": "Hi"}]], None)
    load_s = time.perf_counter() - t
    # "on" as a running server is: each kind of request served once before.
    llm.prefix_reuse = True
    _blurb(writer, "kit-0006")
    _chat(assistant, "a mug for coffee")
    sides: dict[str, dict[str, list[dict[str, Any]]]] = {
        "on": {"blurb": [], "chat": []},
        "off": {"blurb": [], "chat": []},
    }
    start = time.perf_counter()
    for i in range(n):
        if i and time.perf_counter() - start > budget_s:
            print(f"time budget reached after {i} samples per side", file=sys.stderr)
            break
        order = ("on", "off") if i % 2 == 0 else ("off", "on")
        for side in order:
            llm.prefix_reuse = side == "on"
            b = _blurb(writer, BLURB_PRODUCTS[i % len(BLURB_PRODUCTS)])
            c = _chat(assistant, CHAT_QUESTIONS[i % len(CHAT_QUESTIONS)])
            sides[side]["blurb"].append(b)
            sides[side]["chat"].append(c)
            print(
                f"[{side:3}] blurb {b['product']} {b['s']} s ({b['attempts']} att.), "
                f"chat {c['question']!r} first token {c['first_token_s']} s "
                f"(answer {c['answer_s']} s), load {c['load']}",
                file=sys.stderr,
            )
    llm.prefix_reuse = True
    summary: dict[str, Any] = {}
    for side, runs in sides.items():
        bl = [r["s"] for r in runs["blurb"]]
        ft = [r["first_token_s"] for r in runs["chat"]]
        loads = [r["load"] for r in runs["blurb"] + runs["chat"]]
        summary[side] = {
            "n": len(bl),
            "blurb_p50_s": _pct(bl, 0.5),
            "blurb_p95_s": _pct(bl, 0.95),
            "chat_first_token_p50_s": _pct(ft, 0.5),
            "chat_first_token_p95_s": _pct(ft, 0.95),
            "chat_answer_p50_s": _pct([r["answer_s"] for r in runs["chat"]], 0.5),
            "load_mean": round(statistics.mean(loads), 2) if loads else None,
            "load_range": [min(loads), max(loads)] if loads else None,
        }
    on, off = summary["on"], summary["off"]
    ratios = {
        "blurb_p50_off_over_on": round(off["blurb_p50_s"] / on["blurb_p50_s"], 2),
        "chat_first_token_p50_off_over_on": round(
            off["chat_first_token_p50_s"] / on["chat_first_token_p50_s"], 2
        ),
    }
    return {
        "command": "python -m eval.bench_words " + " ".join(map(shlex.quote, sys.argv[1:])),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "profile": profile,
        "model_id": llm.model_id,
        "threads": {"decode": llm.m.llm.n_threads, "prefill": llm.m.llm.n_threads_batch},
        "load_s": round(load_s, 2),
        "summary": summary,
        "ratios": ratios,
        "health": llm.health(),
        "samples": sides,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="small")
    ap.add_argument("--n", type=int, default=4, help="samples per side")
    ap.add_argument("--threads", type=int, default=0, help="0: the backend's default")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop adding samples after")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    up0 = os.popen("uptime").read().strip()
    res = run(a.profile, a.n, a.threads, a.budget_s)
    res["uptime_before"], res["uptime_after"] = up0, os.popen("uptime").read().strip()
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"\n{res['command']}  ({res['wall_s']} s)\n{res['uptime_before']}\n{res['uptime_after']}")
    print(f"profile {a.profile} ({res['model_id']}), threads {res['threads']}")
    print("| prefix reuse | n | blurb p50 s | blurb p95 s | chat first token p50 s | p95 s "
          "| chat answer p50 s | load 1-min mean (range) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for side, s in res["summary"].items():
        print(
            f"| {side} | {s['n']} | {s['blurb_p50_s']} | {s['blurb_p95_s']} | "
            f"{s['chat_first_token_p50_s']} | {s['chat_first_token_p95_s']} | "
            f"{s['chat_answer_p50_s']} | {s['load_mean']} {s['load_range']} |"
        )
    print(f"off/on: {res['ratios']}")
    if a.out:
        a.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
