"""Benchmark: the llama.cpp engine vs transformers on the same model, same prompts, one run.

    .venv/bin/python -m eval.bench_engine [--models tiny,small] [--n 4] [--max-tokens 48]
        [--threads 2]

For each model profile (tiny = SmolLM2-135M-Instruct, small = Qwen2.5-Coder-0.5B-Instruct,
base = 1.5B; prepared with `recsmith models prepare --model …`), both engines, greedy, chat
prompts asking for a product description (prompts/llm_bench.j2 over the demo catalogue):
- prefill tokens/s: one scoring pass over the prompt (cold: llama.cpp's cache emptied);
- decode tokens/s: (answer tokens) / (generate time − that prefill time), cold cache;
- first-token latency of a copy job: system prompt with the product data (the fixed
  prefix, prompts/copy_system.en.j2) + a task; cold (empty cache) vs after another task on
  the same product (llama.cpp reuses the prefix's KV cache; transformers has none).
Transformers runs at its default dtype (float32). Both engines get the same thread count.
Prints the decode ratio (goal ≥ 4×) and writes eval/results/<date>-engine.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import llama_cpp

from eval.bench_llm import DEMO, prompts
from service.config import Settings, get_settings
from service.llm.base import LLM, GenParams, Prompt
from service.llm.llamacpp_backend import LlamaCppLLM
from service.llm.prepare import models_dir
from service.llm.transformers_backend import TransformersLLM
from service.prompts import render

RESULTS = Path(__file__).resolve().parent / "results"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load avg {os.getloadavg()[0]:.2f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cold(llm: LLM) -> None:
    """Empty llama.cpp's context so the next call pays the whole prompt (no-op otherwise)."""
    m = getattr(llm, "m", None)
    if getattr(llm, "backend", "") == "llamacpp" and m is not None:
        with m.lock:
            m.llm.reset()


def first_token_s(llm: LLM, prompt: Prompt) -> float:
    t0 = time.perf_counter()
    it = llm.stream(prompt, GenParams(max_tokens=4))
    next(it)
    dt = time.perf_counter() - t0
    it.close()
    return dt


def copy_jobs(k: int) -> list[tuple[Prompt, Prompt]]:
    """(title task, summary task) for k demo products: same system prompt, different task."""
    products = [json.loads(x) for x in DEMO.read_text().splitlines() if x.strip()][:k]
    jobs = []
    for p in products:
        # The writer's own variables (service/copy/writer.py); description cut like it does.
        p.setdefault("attributes", {})
        # The copy templates are shared with the writer and evolve: render each with a
        # superset of the writer's variables.
        v = {"product": p, "description_chars": 700}
        system = render("copy_system.en", **v).text
        a = render("copy_title.en", **v, max_words=8).text
        b = render("copy_summary.en", **v, max_words=25).text
        jobs.append(
            (
                [{"role": "system", "content": system}, {"role": "user", "content": a}],
                [{"role": "system", "content": system}, {"role": "user", "content": b}],
            )
        )
    return jobs


def measure(llm: LLM, batch: list[Prompt], max_tokens: int, jobs: list[Any]) -> dict[str, Any]:
    llm.generate([batch[0]], GenParams(max_tokens=2))  # warm-up: first-call costs aside
    prefill_tok = prefill_s = decode_tok = decode_s = 0.0
    for p in batch:
        n_prompt = len(llm.encode(p))  # type: ignore[attr-defined]
        _cold(llm)
        t0 = time.perf_counter()
        llm.choice_logprobs(p, ["A"])  # one pass over the prompt: the prefill
        t_pre = time.perf_counter() - t0
        _cold(llm)
        t0 = time.perf_counter()
        g = llm.generate([p], GenParams(max_tokens=max_tokens))[0]
        t_gen = time.perf_counter() - t0
        prefill_tok += n_prompt
        prefill_s += t_pre
        decode_tok += g.completion_tokens
        decode_s += max(t_gen - t_pre, 1e-6)
    cold, warm = [], []
    for a, b in jobs:
        _cold(llm)
        cold.append(first_token_s(llm, a))
        warm.append(first_token_s(llm, b))  # llama.cpp: the system prompt is still cached
    return {
        "prompt_tokens": int(prefill_tok),
        "prefill_s": round(prefill_s, 2),
        "prefill_tok_s": round(prefill_tok / prefill_s, 1),
        "answer_tokens": int(decode_tok),
        "decode_s": round(decode_s, 2),
        "decode_tok_s": round(decode_tok / decode_s, 2),
        "first_token_cold_s": [round(x, 2) for x in cold],
        "first_token_prefix_cached_s": [round(x, 2) for x in warm],
    }


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 2) if xs else 0.0


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Inference engines on CPU: llama.cpp vs transformers — {r['date']}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {r['machine']}. `uptime` before: `{r['uptime_before']}`; "
        f"after: `{r['uptime_after']}` (a shared machine: treat timings as ±30 %).",
        "",
        f"Greedy, {r['n']} chat prompts (prompts/llm_bench.j2 over the demo catalogue), "
        f"max {r['max_tokens']} new tokens, threads per engine: {r['threads']}. transformers: "
        "float32 (its default) from the converted safetensors folder; llama.cpp: the GGUF "
        f"(llama-cpp-python {r['llama_cpp_version']}, built with GGML_NATIVE=OFF + AVX2/FMA/F16C).",
        "",
        "| model | engine | prefill tok/s | decode tok/s | first token cold (s) | "
        "first token, prefix cached (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in r["models"]:
        for eng in ("transformers", "llamacpp"):
            x = m[eng]
            lines.append(
                f"| {m['profile']} ({m['model']}) | {eng} | {x['prefill_tok_s']} | "
                f"{x['decode_tok_s']} | {_mean(x['first_token_cold_s'])} | "
                f"{_mean(x['first_token_prefix_cached_s'])} |"
            )
    lines += ["", "Ratios, llama.cpp / transformers (goal: decode ≥ 4×):", ""]
    for m in r["models"]:
        cold = _mean(m["llamacpp"]["first_token_cold_s"])
        warm = _mean(m["llamacpp"]["first_token_prefix_cached_s"])
        lines.append(
            f"- {m['profile']}: decode **{m['decode_ratio']}×**, prefill "
            f"**{m['prefill_ratio']}×**; llama.cpp first token cold {cold} s → {warm} s "
            "with the system prompt cached"
        )
    lines += [
        "",
        "First token: a copy job's chat prompt — system prompt with the product data "
        "(prompts/copy_system.en.j2, the fixed prefix) + a task. Cold = empty cache, "
        "title task; cached = the summary task right after, same system prompt (llama.cpp "
        "evaluates only the new tail; transformers recomputes everything).",
    ]
    if r.get("note"):
        lines += ["", r["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="tiny,small", help="profiles, comma-separated")
    ap.add_argument("--n", type=int, default=4, help="prompts per model and engine")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for both engines (1: on a shared 2-core box 2 spinning threads stall)",
    )
    ap.add_argument("--jobs", type=int, default=3, help="copy jobs for first-token latency")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    used = sys.argv[1:] if argv is None else argv
    command = "python -m eval.bench_engine " + " ".join(shlex.quote(a) for a in used)

    shared_models = models_dir(get_settings())  # the prepared profiles, not a scratch copy
    before = _uptime()
    data = Path(tempfile.mkdtemp(prefix="bench-engine-"))  # calls are logged, into scratch
    batch = prompts(args.n)
    jobs = copy_jobs(args.jobs)
    rows = []
    for profile in [m.strip() for m in args.models.split(",") if m.strip()]:
        s = Settings(data_dir=data, models_dir=shared_models, llm_model=profile,
                     llm_threads=args.threads)  # fmt: skip
        row: dict[str, Any] = {"profile": profile}
        for eng, cls in (("llamacpp", LlamaCppLLM), ("transformers", TransformersLLM)):
            llm = cls(s.model_copy(update={"llm_backend": eng}))
            print(f"{profile} / {eng}: {llm.model_id}", flush=True)
            row[eng] = measure(llm, batch, args.max_tokens, jobs)
            row["model" if eng == "transformers" else "gguf"] = llm.model_id
            print(json.dumps(row[eng]), flush=True)
        row["decode_ratio"] = round(
            row["llamacpp"]["decode_tok_s"] / row["transformers"]["decode_tok_s"], 2
        )
        row["prefill_ratio"] = round(
            row["llamacpp"]["prefill_tok_s"] / row["transformers"]["prefill_tok_s"], 2
        )
        print(f"{profile}: decode {row['decode_ratio']}x, prefill {row['prefill_ratio']}x")
        rows.append(row)
    result = {
        "date": date.today().isoformat(),
        "command": command,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_name()}",
        "uptime_before": before,
        "uptime_after": _uptime(),
        "n": args.n,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "llama_cpp_version": llama_cpp.__version__,
        "models": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['date']}-engine"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {stem}.md and .json")
    return result


if __name__ == "__main__":
    main()
