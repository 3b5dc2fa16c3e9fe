"""Benchmark: verbalizer (one forward pass, LlamaRec) vs generated listwise ranking
(reasoning) on the same model, user and 20 candidates. Goal: verbalizer ≥ 10× faster.

    .venv/bin/python -m eval.bench_rerank [--reps 2] [--max-tokens 192]
        [--vllm-url http://127.0.0.1:8008/v1 | --start-vllm] [--no-vllm]

Runs the in-process transformers backend and, when reachable (or started with
--start-vllm), the vLLM server. The two rerankers alternate (V, R, V, R, …, V) so drift on
a shared machine hits both; medians are reported. Also times the degraded paths: a server
on a closed port, and a time budget too small for the model. Writes
eval/results/<date>-rerank.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from service.catalog.models import Product
from service.config import Settings
from service.llm.base import LLM
from service.llm.factory import get_llm
from service.llm.prepare import prepare_model
from service.ranking.base import RankResult, UserContext
from service.ranking.common import ALL_LABELS, Item, product_text
from service.ranking.factory import get_reranker
from service.ranking.verbalizer import build_prompt
from service.retrieval.retriever import Candidate

RESULTS = Path(__file__).resolve().parent / "results"
DEMO = Path(__file__).resolve().parent.parent / "service" / "demo" / "products.jsonl"


def workload(n: int) -> tuple[UserContext, list[Candidate], dict[str, Product]]:
    """A kitchen shopper (3 recent items) and n candidates from several categories."""
    products = [Product.model_validate_json(x) for x in DEMO.read_text().splitlines() if x.strip()]
    by_id = {p.id: p for p in products}
    kitchen = [p for p in products if p.category == "Kitchen"]
    history = kitchen[:3]
    pool = [p for p in products if p not in history]
    step = max(1, len(pool) // n)
    picks = pool[::step][:n]
    cands = [Candidate(p.id, round(1.0 / (i + 1), 4)) for i, p in enumerate(picks)]
    return UserContext(history=history), cands, by_id


def summary(res: RankResult) -> dict[str, Any]:
    d: dict[str, Any] = {
        "latency_s": round(res.latency_s, 3),
        "degraded": res.degraded,
        "reason": res.reason,
        "top5": [pid for pid, _ in res.order[:5]],
    }
    passes = res.meta.get("pass_details")
    if passes:
        d["completion_tokens"] = passes[0].get("completion_tokens")
        d["parsed"] = passes[0].get("parsed")
        d["ranked_by_model"] = passes[0].get("ranked_by_model")
    if res.rationale:
        d["rationale"] = res.rationale
    return d


def bench_backend(
    llm: LLM, reps: int, max_tokens: int, n: int, warm_reasoning: bool
) -> dict[str, Any]:
    user, cands, products = workload(n)
    verb = get_reranker("verbalizer", llm)
    reas = get_reranker("reasoning", llm, max_tokens=max_tokens)
    warm = verb.rank(user, cands, products)  # loads/pages the model, first logprobs call
    if warm_reasoning:  # vLLM compiles the JSON-schema grammar on first use
        reas.rank(user, cands, products)
    v_runs: list[dict[str, Any]] = []
    r_runs: list[dict[str, Any]] = []
    for _ in range(reps):
        v_runs.append(summary(verb.rank(user, cands, products)))
        r_runs.append(summary(reas.rank(user, cands, products)))
    v_runs.append(summary(verb.rank(user, cands, products)))
    v_med = statistics.median(r["latency_s"] for r in v_runs)
    raw = raw_logprobs_request(llm, user, cands, products)
    r_med = statistics.median(r["latency_s"] for r in r_runs)
    return {
        "backend": llm.backend,
        "model_id": llm.model_id,
        "candidates": n,
        "warmup_verbalizer_s": round(warm.latency_s, 3),
        "verbalizer_median_s": round(v_med, 3),
        "reasoning_median_s": round(r_med, 3),
        "ratio": round(r_med / v_med, 1) if v_med > 0 else None,
        "verbalizer_degraded": any(r["degraded"] for r in v_runs),
        "reasoning_degraded": any(r["degraded"] for r in r_runs),
        "verbalizer_runs": v_runs,
        "reasoning_runs": r_runs,
        "reasoning_max_tokens": max_tokens,
        **raw,
    }


def raw_logprobs_request(
    llm: LLM, user: UserContext, cands: list[Candidate], products: dict[str, Product]
) -> dict[str, Any]:
    """OpenAI backend only: the cost of the verbalizer's forward pass as the engine does it
    (one /v1/completions request, max_tokens=1, top-20 logprobs), and how many of the 20
    labels that top-20 holds. The backend scores labels missing from it exactly, with extra
    prompt_logprobs requests: this separates the engine's cost from that fallback's."""
    if llm.backend != "openai":
        return {}
    # lazy: httpx takes ~0.4 s; only this command talks HTTP
    import httpx

    items = [
        Item(ALL_LABELS[k], product_text(products.get(c.product_id), c.product_id))
        for k, c in enumerate(cands)
    ]
    messages, _ = build_prompt(user, items)
    api: Any = llm  # OpenAILLM: tokenize(), choice_token_ids(), model, base_url
    ids = api.tokenize(messages)
    label_ids = {ids[0] for ids in api.choice_token_ids(ALL_LABELS[: len(cands)]).values()}
    body = {
        "model": api.model,
        "prompt": [ids],
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": 20,
        "return_tokens_as_token_ids": True,
    }
    t0 = time.perf_counter()
    r = httpx.post(f"{api.servers[0].base_url}/completions", json=body, timeout=300)
    took = time.perf_counter() - t0
    top = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    found = sum(1 for k in top if int(k.split(":")[1]) in label_ids)
    return {
        "raw_top20_request_s": round(took, 3),
        "labels_in_top20": found,
        "prompt_tokens": len(ids),
    }


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_degraded(data_dir: Path, inproc: LLM, n: int) -> dict[str, Any]:
    """Time to a degraded (retrieval-order) answer when the model cannot answer."""
    # lazy: service.llm.openai_backend pulls httpx (not needed to import this module)
    from service.llm.openai_backend import OpenAILLM

    user, cands, products = workload(n)
    out: dict[str, Any] = {}
    s = Settings(
        data_dir=data_dir,
        llm_backend="openai",
        llm_base_url=f"http://127.0.0.1:{closed_port()}/v1",
    )
    dead = OpenAILLM(s)  # default retries (llm_max_retries) and backoff, as in production
    try:
        for name in ("verbalizer", "reasoning"):
            res = get_reranker(name, dead).rank(user, cands, products)
            out[f"closed_port_{name}"] = summary(res)
    finally:
        dead.close()
    res = get_reranker("verbalizer", inproc, timeout_s=0.05).rank(user, cands, products)
    out["in_process_budget_0.05s_verbalizer"] = summary(res)
    return out


def vllm_llm(args: argparse.Namespace, settings: Settings) -> tuple[LLM | None, Any, str]:
    """An OpenAI backend for a reachable/started vLLM, the server we started, and a note."""
    # lazy: httpx takes ~0.4 s; only this command talks HTTP
    import httpx

    # lazy: service.llm.openai_backend pulls httpx (not needed to import this module)
    from service.llm.openai_backend import OpenAILLM

    if args.no_vllm:
        return None, None, "skipped (--no-vllm)"
    server = None
    url, name = args.vllm_url, settings.llm_served_name
    if args.start_vllm:
        # lazy: service.llm.vllm_server pulls httpx (not needed to import this module)
        from service.llm.vllm_server import VLLMServer, free_port

        server = VLLMServer(args.model_path, port=free_port(), served_name=name,
                            log_path=Path(settings.data_dir) / "vllm-bench.log",
                            startup_timeout_s=args.vllm_startup_s)  # fmt: skip
        try:
            server.start()
        except Exception as e:  # noqa: BLE001 - the in-process half is still worth writing
            return None, None, f"could not start vLLM: {type(e).__name__}: {e}"[:500]
        url = server.base_url
    root = url[:-3] if url.endswith("/v1") else url
    try:
        ok = httpx.get(f"{root}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        ok = False
    if not ok:
        if server:
            server.stop()
        return None, None, f"no vLLM server at {url} (use --start-vllm)"
    s = settings.model_copy(
        update={"llm_backend": "openai", "llm_base_url": url, "llm_timeout_s": 300.0}
    )
    return OpenAILLM(s), server, f"vLLM at {url}"


def write(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = "-".join(b["backend"] for b in result["backends"]) or "none"
    stem = out_dir / f"{date.today().isoformat()}-rerank-{names}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    lines = [
        f"# Reranker latency: verbalizer vs generated listwise ranking ({date.today()})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Same model, user (3 recent items) and {result['candidates']} candidates; reasoning "
        f"generates up to {result['max_tokens']} tokens of JSON. Medians over "
        f"{result['reps']} reasoning / {result['reps'] + 1} verbalizer runs, alternated.",
        "",
        "| backend | model | verbalizer s | reasoning s | ratio (goal ≥ 10×) "
        "| reasoning tokens | parsed |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in result["backends"]:
        toks = [r.get("completion_tokens") for r in b["reasoning_runs"]]
        parsed = [r.get("parsed") for r in b["reasoning_runs"]]
        lines.append(
            f"| {b['backend']} | {b['model_id']} | {b['verbalizer_median_s']} | "
            f"{b['reasoning_median_s']} | **{b['ratio']}×** | {toks} | {parsed} |"
        )
    for b in result["backends"]:
        if "raw_top20_request_s" in b:
            lines += [
                "",
                f"{b['backend']}: one raw top-20 logprobs request (the verbalizer's single forward "
                f"pass as the engine runs it, {b['prompt_tokens']} prompt tokens) took "
                f"{b['raw_top20_request_s']} s, i.e. "
                f"{b['reasoning_median_s'] / max(b['raw_top20_request_s'], 1e-9):.0f}× faster than "
                f"reasoning. That top-20 held {b['labels_in_top20']}/{result['candidates']} "
                "labels; "
                "the backend scores the missing ones exactly with extra prompt_logprobs requests, "
                "which is what makes the verbalizer slow on this backend.",
            ]
    lines += [
        "",
        f"vLLM: {result['vllm']}",
        "",
        "Degraded paths (time to a retrieval-order answer):",
        "",
    ]
    for k, v in result["degraded"].items():
        lines.append(f"- {k}: {v['latency_s']} s, degraded={v['degraded']} ({v['reason']})")
    lines += ["", f"Machine: {result['machine']}", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return stem


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2, help="reasoning runs (verbalizer: reps + 1)")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--vllm-url", default=Settings().llm_base_url)
    ap.add_argument("--start-vllm", action="store_true")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--no-inprocess", action="store_true", help="only the vLLM backend")
    ap.add_argument("--vllm-startup-s", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rewrite", type=Path, help="only rewrite the Markdown of a results JSON")
    args = ap.parse_args(argv)
    if args.rewrite:
        result = json.loads(args.rewrite.read_text())
        print(f"wrote {write(result, args.rewrite.parent)}.md")
        return result
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python -m eval.bench_rerank " + " ".join(shlex.quote(a) for a in argv_used)

    args.model_path = str(prepare_model())
    data_dir = Path(tempfile.mkdtemp(prefix="bench-rerank-"))  # llm_calls log of this run
    settings = Settings(data_dir=data_dir, llm_model=args.model_path)
    inproc = get_llm(settings)
    backends = []
    if not args.no_inprocess:
        print(f"in-process: {inproc.model_id}, {args.candidates} candidates", flush=True)
        backends.append(bench_backend(inproc, args.reps, args.max_tokens, args.candidates, False))
        print(json.dumps({k: v for k, v in backends[-1].items() if not k.endswith("runs")}))

    remote, server, note = vllm_llm(args, settings)
    print(note, flush=True)
    try:
        if remote is not None:
            backends.append(
                bench_backend(remote, args.reps, args.max_tokens, args.candidates, True)
            )
            print(json.dumps({k: v for k, v in backends[-1].items() if not k.endswith("runs")}))
    finally:
        if remote is not None:
            remote.close()
        if server is not None:
            server.stop()

    degraded = bench_degraded(data_dir, inproc, args.candidates)
    result = {
        "command": command,
        "date": date.today().isoformat(),
        "candidates": args.candidates,
        "reps": args.reps,
        "max_tokens": args.max_tokens,
        "backends": backends,
        "vllm": note,
        "degraded": degraded,
        "machine": f"{platform.machine()}, {platform.python_version()}, shared CPU",
    }
    stem = write(result, args.out)
    for b in backends:
        print(f"{b['backend']}: verbalizer {b['verbalizer_median_s']} s, reasoning "
              f"{b['reasoning_median_s']} s → {b['ratio']}× faster")  # fmt: skip
    for k, v in degraded.items():
        print(f"{k}: {v['latency_s']} s degraded={v['degraded']}")
    print(f"wrote {stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
