"""Chat first-token latency and answers per writer profile (issue 10's goal: first token
p50 ≤ 4 s on 2 cores), on the demo catalogue with the default encoder.

    python -m eval.bench_chat --profile small [--threads 2] --out /tmp/chat-small.json

Two conversations, each a question and a follow-up: "a gift for a tea lover" → "a cheaper
one?", and "推荐一款咖啡机" → "有便宜点的吗？". Every turn's first-token time (from the call
to the first streamed token), full-answer time and answer are recorded; the first turn
after loading also pays for the system prompt's prefill (a backend with prefix reuse then
keeps it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service.assistant.chat import Assistant
from service.catalog.ingest import ingest_file
from service.config import Settings
from service.recsmith import Recsmith

CONVERSATIONS: list[list[str]] = [
    ["a gift for a tea lover", "a cheaper one?"],
    ["推荐一款咖啡机", "有便宜点的吗？"],
    ["a knife for vegetables", "有便宜点的吗？"],
]
PROFILE_BACKENDS = {"tiny": "transformers", "small": "llamacpp", "base": "llamacpp"}


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 2) if s else 0.0


def run_chat_bench(
    profile: str,
    backend: str | None = None,
    threads: int = 2,
    conversations: list[list[str]] | None = None,
) -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    demo = repo / "service" / "demo"
    tmp = tempfile.TemporaryDirectory(prefix="recsmith-chat-bench-")
    settings = Settings(
        data_dir=Path(tmp.name),
        database_url="",
        models_dir=repo / "var" / "models",
        writer_backend=backend or PROFILE_BACKENDS.get(profile, "llamacpp"),
        writer_model=profile,
        llm_threads=threads,
    )
    settings.ensure_dirs()
    rs = Recsmith(settings)
    ingest_file(rs.store, demo / "products.jsonl", "products")
    ingest_file(rs.store, demo / "interactions.jsonl", "interactions")
    rs.sync_index()
    assistant = Assistant(rs)
    t = time.perf_counter()
    llm = assistant.llm()
    llm.generate([[{"role": "user", "content": "Hi"}]], None)  # load, not timed per turn
    load_s = time.perf_counter() - t
    turns: list[dict[str, Any]] = []
    for conv in conversations or CONVERSATIONS:
        cid = None
        for message in conv:
            t0 = time.perf_counter()
            first: float | None = None
            final: dict[str, Any] = {}
            for ev in assistant.stream(message, cid):
                if ev["type"] == "token" and first is None:
                    first = time.perf_counter() - t0
                elif ev["type"] == "final":
                    final = ev
            total = time.perf_counter() - t0
            cid = final.get("conversation_id")
            turns.append(
                {
                    "message": message,
                    "first_token_s": round(first if first is not None else total, 2),
                    "answer_s": round(total, 2),
                    "answer": final.get("answer", ""),
                    "cited": final.get("cited", []),
                    "products": [
                        f"{c['title']} ({c['price']} {c['currency']})"
                        for c in final.get("products", [])
                    ],
                    "degraded": final.get("degraded"),
                    "template": final.get("template"),
                    "flags": [f["kind"] for f in final.get("flags", [])],
                    "removed": final.get("removed", []),
                    "query": final.get("query"),
                }
            )
            print(f"{profile} {message!r} {turns[-1]['first_token_s']} s", file=sys.stderr)
    tmp.cleanup()
    ft = [t["first_token_s"] for t in turns]
    return {
        "profile": profile,
        "model_id": llm.model_id,
        "backend": llm.backend,
        "load_s": round(load_s, 1),
        "first_token_p50_s": _pct(ft, 0.5),
        "first_token_p95_s": _pct(ft, 0.95),
        "answer_p50_s": _pct([t["answer_s"] for t in turns], 0.5),
        "turns": turns,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", required=True)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--message", action="append", default=None,
        help="a one-turn conversation instead of the standard ones (repeatable)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    convs = [[m] for m in a.message] if a.message else None
    res = run_chat_bench(a.profile, a.backend, a.threads, convs)
    a.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
