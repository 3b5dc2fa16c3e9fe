"""Copy evaluation on a real catalogue: ComparEdge (331 software products, CC-BY-4.0).

Each product's long description is summarised by recsmith's copy writer; the product's own
short description is the reference. Reported side by side with a lead baseline (the long
description's first words, cut to the same limit): grounding-check pass rate (first try
and after retries), length and language compliance, ROUGE-L F1 against the reference,
and mean latency per item.

    recsmith eval copy [--limit 40] [--max-words 25]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from eval.bench_chat import CONVERSATIONS, run_chat_bench
from service.catalog.ingest import ingest_file  # noqa: F401 - the demo's loader format
from service.catalog.models import Product
from service.catalog.store import CatalogStore
from service.config import Settings, get_settings
from service.copy.checks import _CJK_RE, normalise_text
from service.copy.tasks import CopyOptions, CopyRequest
from service.copy.writer import CopyWriter
from service.llm.prepare import resolve_model_path
from service.offline.datasets import SOURCES, PackagedData, fetch

COMPAREDGE = PackagedData(
    key="comparedge",
    package="comparedge-data",
    version="1.0.0",
    wheel="comparedge_data-1.0.0-py3-none-any.whl",
    wheel_sha256="0808295f110a5454bce333b7c9a011d420cb934464727ad99bd2ff7dc49334a2",
    files={
        "comparedge_data/data/products.json": (
            "ec87dafa2aa2ec717416641bb4b9bab79a9108f0d2394622d00ebe528e0972ce"
        )
    },
)
SOURCES.setdefault(COMPAREDGE.key, COMPAREDGE)

_WORD = re.compile(r"\w+", re.UNICODE)
_SLUG = re.compile(r"[^A-Za-z0-9_.:\-]+")


@dataclass
class CopyCase:
    product: Product
    reference: str


def load_comparedge(root: Path | None = None) -> list[CopyCase]:
    path = fetch(COMPAREDGE.key, root)["comparedge_data/data/products.json"]
    cases = []
    for raw in json.loads(path.read_text(encoding="utf-8")):
        plans = (raw.get("pricing") or {}).get("plans") or []
        prices = [p["price"] for p in plans if isinstance(p.get("price"), int | float)]
        paid = [p for p in prices if p > 0]
        attributes: dict[str, Any] = {
            "plans": "; ".join(
                f"{p.get('name')}: {p.get('price')} {p.get('period', '')}".strip()
                for p in plans
                if p.get("price") is not None
            ),
            "features": ", ".join((raw.get("features") or [])[:12]),
        }
        if raw.get("founded"):
            attributes["founded"] = raw["founded"]
        if raw.get("hq"):
            attributes["hq"] = raw["hq"]
        product = Product(
            id="ce-" + _SLUG.sub("-", str(raw.get("slug") or raw["name"]).lower())[:100],
            title=raw["name"],
            description=raw.get("longDescription") or raw.get("description") or "",
            category=str(raw.get("category") or ""),
            brand=raw["name"],
            price=min(paid) if paid else (0.0 if prices else None),
            attributes={k: v for k, v in attributes.items() if v not in ("", None)},
            tags=[str(t) for t in (raw.get("subcategories") or [])][:5],
        )
        cases.append(CopyCase(product, raw.get("description") or ""))
    return cases


# -- metrics --------------------------------------------------------------------------
def tokens(text: str) -> list[str]:
    return [t.lower() for t in _WORD.findall(text)]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    a, b = tokens(candidate), tokens(reference)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def lead_baseline(text: str, max_words: int) -> str:
    words = text.split()
    return " ".join(words[:max_words])


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


# -- the run --------------------------------------------------------------------------
def run_copy_eval(
    limit: int = 40,
    max_words: int = 25,
    seed: int = 0,
    batch_size: int = 8,
    data_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    cases = load_comparedge()
    random.Random(seed).shuffle(cases)
    cases = cases[:limit]
    base = get_settings()
    tmp = tempfile.TemporaryDirectory(prefix="recsmith-copy-eval-")
    settings = Settings(
        **{**base.model_dump(), "data_dir": data_dir or Path(tmp.name), "database_url": ""}
    )
    if base.llm_model == "default":
        # Reuse the model prepared in the main data dir rather than converting it again.
        settings.llm_model = resolve_model_path(base)
    settings.ensure_dirs()
    catalog = CatalogStore(settings.db_url)
    catalog.upsert_products([c.product for c in cases])
    writer = CopyWriter(settings, catalog=catalog)
    options = CopyOptions(max_words=max_words, language="en")

    rows: list[dict[str, Any]] = []
    t_total = 0.0
    for start in range(0, len(cases), batch_size):
        batch = cases[start : start + batch_size]
        t = time.perf_counter()
        results = writer.generate_for_products("summary", [c.product for c in batch], options)
        elapsed = time.perf_counter() - t
        t_total += elapsed
        for case, per in zip(batch, results, strict=True):
            r = per[0]
            text = r.generated_text or ""
            rows.append(
                {
                    "product_id": case.product.id,
                    "text": text,
                    "passed": r.passed,
                    "first_try": r.passed and r.attempts == 1,
                    "attempts": r.attempts,
                    "failed_checks": r.failed_checks,
                    "length_ok": len(text.split()) <= max_words,
                    "language_ok": r.checks.get("language").ok
                    if r.checks.get("language")
                    else None,
                    "rouge_l": rouge_l(text, case.reference),
                    "lead_rouge_l": rouge_l(
                        lead_baseline(case.product.description, max_words), case.reference
                    ),
                }
            )
        if progress:
            progress(len(batch))
    tmp.cleanup()
    n = len(rows)
    llm = writer.llm
    return {
        "dataset": "comparedge-data==1.0.0 (331 products; long description -> summary)",
        "items": n,
        "max_words": max_words,
        "seed": seed,
        "model_id": llm.model_id,
        "backend": llm.backend,
        "methods": {
            "recsmith summary": {
                "pass_rate_first_try": _mean([float(r["first_try"]) for r in rows]),
                "pass_rate_final": _mean([float(r["passed"]) for r in rows]),
                "length_compliance": _mean([float(r["length_ok"]) for r in rows]),
                "language_compliance": _mean([float(bool(r["language_ok"])) for r in rows]),
                "rouge_l": _mean([r["rouge_l"] for r in rows]),
                "mean_latency_s_per_item": round(t_total / max(n, 1), 3),
            },
            "lead baseline (first words)": {
                "rouge_l": _mean([r["lead_rouge_l"] for r in rows]),
                "length_compliance": 1.0,
                "mean_latency_s_per_item": 0.0,
            },
        },
        "failed_checks": _count([c for r in rows for c in r["failed_checks"]]),
        "examples": rows[:5],
    }


def _count(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def write_copy_report(result: dict[str, Any], out_dir: Path, command: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{date.today().isoformat()}-copy-comparedge"
    result = {"command": command, **result}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    m = result["methods"]["recsmith summary"]
    lead = result["methods"]["lead baseline (first words)"]
    lines = [
        f"# Copy evaluation: ComparEdge summaries ({date.today().isoformat()})",
        "",
        f"Command: `{command}`",
        "",
        f"{result['items']} products (seeded sample, seed {result['seed']}), word limit "
        f"{result['max_words']}, model `{result['model_id']}` ({result['backend']}).",
        "",
        "| method | checks pass (1st try) | checks pass (final) | length ok | language ok "
        "| ROUGE-L F1 | latency / item |",
        "|---|---|---|---|---|---|---|",
        f"| recsmith summary | {m['pass_rate_first_try']:.2f} | {m['pass_rate_final']:.2f} | "
        f"{m['length_compliance']:.2f} | {m['language_compliance']:.2f} | {m['rouge_l']:.3f} | "
        f"{m['mean_latency_s_per_item']:.2f} s |",
        f"| lead baseline | – | – | {lead['length_compliance']:.2f} | – "
        f"| {lead['rouge_l']:.3f} | 0 |",
        "",
        f"Failed checks (all attempts' final state): {result['failed_checks'] or 'none'}.",
        "",
        "The reference is the product's own one-line description, written by people for a "
        "different purpose, so ROUGE-L is low for every method; it is a relative measure.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


# -- writer profiles side by side (issue 10) --------------------------------------------------
# tiny runs on transformers (the test profile), small and base on llama.cpp (GGUF, 4-bit).
PROFILE_BACKENDS: dict[str, str] = {"tiny": "transformers", "small": "llamacpp", "base": "llamacpp"}
_FAIL_GROUPS = {
    "invented_number": ("numbers",),
    "unsupported_claim": ("claims", "banned"),
    "invented_attribute": ("attributes", "names"),
    "repetition_or_echo": ("repetition", "echo", "injection", "format"),
}


def key_attributes(p: Product) -> list[str]:
    """The facts a text could be expected to mention: each attribute value (a list value's
    first four items), the brand when it is not the title, and the price."""
    out: list[str] = []
    for key, value in (p.attributes or {}).items():
        text = str(value)
        if key in ("features", "plans"):
            out += [v.strip() for v in re.split(r"[;,]", text) if v.strip()][:4]
        else:
            out.append(text)
    if p.brand and p.brand.lower() not in p.title.lower():
        out.append(p.brand)
    if p.price:
        out.append(f"{p.price:g}")
    return out


def mentions(text: str, fact: str) -> bool:
    """A fact is mentioned when half its content words (Chinese: one of its character
    pairs, or its digits) occur in the text."""
    t, f = normalise_text(text), normalise_text(fact)
    cjk = "".join(_CJK_RE.findall(f))
    if cjk:
        return any(cjk[i : i + 2] in t for i in range(len(cjk) - 1)) or (
            bool(re.findall(r"\d+", f)) and all(d in t for d in re.findall(r"\d+(?:\.\d+)?", f))
        )
    words = [w for w in _WORD.findall(f) if len(w) >= 3 or w.isdigit()]
    if not words:
        return False
    return sum(1 for w in words if w in t) * 2 >= len(words)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 2)


def demo_chinese_products() -> list[Product]:
    path = Path(__file__).resolve().parents[1] / "service" / "demo" / "products.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [Product(**r) for r in rows if "-zh-" in r["id"]]


def summarise(rows: list[dict[str, Any]], tasks: Sequence[str], load_s: float) -> dict[str, Any]:
    """The quality rates, latency percentiles and tokens/s of a run's rows."""
    n = len(rows)

    def rate(pred: Callable[[dict[str, Any]], bool], subset: list[dict] | None = None) -> float:
        xs = rows if subset is None else subset
        return round(sum(1 for r in xs if pred(r)) / len(xs), 3) if xs else 0.0

    served = [r for r in rows if r["served"] is not None]
    metrics: dict[str, Any] = {
        "texts": n,
        "first_try_pass": rate(lambda r: r["first_try"]),
        "served_clean": rate(lambda r: r["passed"], served),
        "served": len(served),
        "refused": n - len(served),
        "language_ok": rate(lambda r: r["language_ok"]),
        "length_ok": rate(lambda r: r["length_ok"]),
        "attribute_coverage": round(sum(r["coverage"] for r in rows) / max(n, 1), 3),
        "mean_attempts": round(sum(r["attempts"] for r in rows) / max(n, 1), 2),
        "load_s": round(load_s, 1),
    }
    for name, checks in _FAIL_GROUPS.items():
        # Among texts as served (after retries), and on the first try.
        metrics[f"{name}_served"] = rate(
            lambda r, c=checks: bool(set(c) & set(r["failed_checks"])), served
        )
        metrics[f"{name}_first_try"] = rate(
            lambda r, c=checks: bool(set(c) & set(r["first_failed"]))
        )
    for task in tasks:
        lat = [r["latency_s"] for r in rows if r["task"] == task]
        metrics[f"{task}_p50_s"] = _pct(lat, 0.5)
        metrics[f"{task}_p95_s"] = _pct(lat, 0.95)
    toks = sum(r["completion_tokens"] for r in rows)
    metrics["tokens_per_s"] = round(toks / max(sum(r["latency_s"] for r in rows), 1e-9), 2)
    return metrics


def run_profile_eval(
    profile: str,
    backend: str | None = None,
    n_comparedge: int = 8,
    n_chinese: int = 6,
    tasks: tuple[str, ...] = ("summary", "blurb"),
    seed: int = 0,
    threads: int = 2,
    models_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Each product × task written one request at a time (as a shopper-facing call is), with
    the writer's defaults (retries included): quality rates, latency, tokens/s, texts.
    shard=(k, n): only the k-th of every n (task, product) pairs, for runs in parallel
    processes that `--combine` joins (the texts do not depend on each other)."""
    backend = backend or PROFILE_BACKENDS.get(profile, "llamacpp")
    cases = load_comparedge()
    random.Random(seed).shuffle(cases)
    products = [c.product for c in cases[:n_comparedge]] + demo_chinese_products()[:n_chinese]
    repo = Path(__file__).resolve().parents[1]
    tmp = tempfile.TemporaryDirectory(prefix="recsmith-copy-profiles-")
    settings = Settings(
        data_dir=Path(tmp.name),
        database_url="",
        models_dir=models_dir or repo / "var" / "models",
        writer_backend=backend,
        writer_model=profile,
        llm_threads=threads,
    )
    settings.ensure_dirs()
    catalog = CatalogStore(settings.db_url)
    catalog.upsert_products(products)
    writer = CopyWriter(settings, catalog=catalog)
    t_load = time.perf_counter()
    llm = writer.llm
    llm.generate([[{"role": "user", "content": "Hi"}]], None)  # load (not timed per text)
    load_s = time.perf_counter() - t_load
    rows: list[dict[str, Any]] = []
    # Task by task, as a batch job runs: the fixed prompt prefix (rules and the task's
    # worked example) stays in the backend's cache from one product to the next.
    pairs = [(task, p) for task in tasks for p in products]
    for i, (task, p) in enumerate(pairs):
        if i % shard[1] == shard[0]:
            t = time.perf_counter()
            [r] = writer.generate(CopyRequest(task=task, product_id=p.id, regenerate=True))
            dt = time.perf_counter() - t
            text = r.generated_text or ""
            facts = key_attributes(p)
            final_failed = set(r.failed_checks)
            first_failed = set(
                (r.meta.get("failed_attempts") or [{}])[0].get("failed", [])
                if r.attempts > 1
                else final_failed
            )
            attempts_meta = r.meta.get("failed_attempts") or []
            rows.append(
                {
                    "pair": i,
                    "product_id": p.id,
                    "language": r.language,
                    "task": task,
                    "text": text,
                    "served": r.text,
                    "passed": r.passed,
                    "first_try": r.passed and r.attempts == 1,
                    "attempts": r.attempts,
                    "failed_checks": sorted(final_failed),
                    "first_failed": sorted(first_failed),
                    # The first try's own text when it failed (what the checks caught).
                    "first_text": attempts_meta[0].get("text") if r.attempts > 1 else None,
                    "language_ok": "language" not in final_failed,
                    "length_ok": "length" not in final_failed,
                    "coverage": (
                        sum(mentions(text, f) for f in facts) / len(facts) if facts else 0.0
                    ),
                    "latency_s": round(dt, 3),
                    "completion_tokens": int(r.meta.get("completion_tokens") or 0),
                }
            )
            if progress:
                progress(f"{profile} {p.id} {task} {dt:.1f}s {r.failed_checks}")
    tmp.cleanup()
    metrics = summarise(rows, tasks, load_s)
    return {
        "profile": profile,
        "backend": backend,
        "model_id": llm.model_id,
        "threads": threads,
        "sample": f"{n_comparedge} ComparEdge products (seed {seed}) + "
        f"{len(products) - n_comparedge} demo Chinese products × {', '.join(tasks)}",
        "metrics": metrics,
        "failed_checks": _count([c for r in rows for c in r["failed_checks"]]),
        "first_failed_checks": _count([c for r in rows for c in r["first_failed"]]),
        "rows": rows,
    }


def write_profiles_report(
    results: list[dict[str, Any]], chat: dict[str, Any] | None, out: Path, command: str,
    machine: str,
) -> tuple[Path, Path]:  # fmt: skip
    """eval/results/<date>-copy-profiles.{json,md}: the metrics table, then sample texts
    side by side, then the chat first-token figures."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": machine, "profiles": results, "chat": chat}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    cols = [
        ("first_try_pass", "1st-try pass"), ("served_clean", "served clean"),
        ("invented_number_served", "invented no. (served)"),
        ("unsupported_claim_served", "unsupported claim (served)"),
        ("repetition_or_echo_served", "repetition/echo (served)"),
        ("unsupported_claim_first_try", "claim (1st try)"),
        ("invented_attribute_first_try", "invented attr./name (1st try)"),
        ("language_ok", "language ok"), ("length_ok", "length ok"),
        ("attribute_coverage", "attr. coverage"), ("summary_p50_s", "summary p50 s"),
        ("summary_p95_s", "summary p95 s"), ("blurb_p50_s", "blurb p50 s"),
        ("blurb_p95_s", "blurb p95 s"), ("tokens_per_s", "tokens/s"),
        ("mean_attempts", "attempts"), ("refused", "refused"),
    ]  # fmt: skip
    lines = [
        "# Copy quality by writer profile (issue 10)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}",
        "",
        f"Sample: {results[0]['sample'] if results else '-'}; one request at a time, greedy, "
        "the writer's defaults (repetition penalty, up to 2 retries).",
        "",
        "| profile | backend | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in results:
        m = r["metrics"]
        lines.append(
            f"| {r['profile']} | {r['backend']} | "
            + " | ".join(str(m.get(c[0], "")) for c in cols)
            + " |"
        )
    lines += [
        "",
        "Rates are shares of all texts, except *(served)*: among texts served (not refused). "
        "1st-try pass: passed every check without a retry. Served clean: the served text passes "
        "every check. Attribute coverage: share of the product's key facts (attribute values, "
        "the first four features/plans, the brand, the price) the text mentions.",
        "",
        "Failed checks of the served texts: "
        + "; ".join(f"{r['profile']}: {r['failed_checks'] or 'none'}" for r in results),
        "",
        "Failed checks on the first try: "
        + "; ".join(f"{r['profile']}: {r['first_failed_checks'] or 'none'}" for r in results),
        "",
    ]
    if chat:
        lines += ["## Chat first token", "", chat.get("note", ""), "",
                  "| profile | first token p50 s | p95 s | full answer p50 s | turns |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for prof, c in chat.get("profiles", {}).items():
            lines.append(
                f"| {prof} | {c['first_token_p50_s']} | {c['first_token_p95_s']} | "
                f"{c['answer_p50_s']} | {len(c['turns'])} |"
            )
        lines.append("")
        for prof, c in chat.get("profiles", {}).items():
            lines.append(f"### Chat answers, {prof}")
            lines.append("")
            for t in c["turns"]:
                ans = t["answer"].replace("|", "/").replace("\n", " ")
                lines.append(f"- **{t['message']}** ({t['first_token_s']} s) → {ans}")
            lines.append("")
    lines += ["## Sample texts side by side", ""]
    if results:
        keys = [(r["product_id"], r["task"]) for r in results[0]["rows"]]
        picks = [k for i, k in enumerate(keys) if i % 3 == 0][:12]
        by = {r["profile"]: {(x["product_id"], x["task"]): x for x in r["rows"]} for r in results}
        lines += ["| product, task | " + " | ".join(r["profile"] for r in results) + " |",
                  "|---|" + "---|" * len(results)]  # fmt: skip
        for k in picks:
            cells = []
            for r in results:
                x = by[r["profile"]].get(k)
                if x is None:
                    cells.append("-")
                    continue
                t = (x["text"] or "").replace("|", "/").replace("\n", " ")
                mark = "" if x["passed"] else f" ✗ {','.join(x['failed_checks'])}"
                cells.append(t + mark + ("" if x["served"] is not None else " (refused)"))
            lines.append(f"| {k[0]}, {k[1]} | " + " | ".join(cells) + " |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return out.with_suffix(".json"), out.with_suffix(".md")


def run_profiles_report(
    profiles: list[str],
    out_dir: Path,
    command: str,
    n_comparedge: int = 8,
    n_chinese: int = 6,
    threads: int = 0,
    chat: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[Path, Path]:
    """`recsmith eval copy --profile tiny,small`: each profile's copy run (and chat turns),
    one after another so each has the CPU to itself, into one report
    (<out_dir>/<date>-copy-profiles.{json,md}) with the load average of each run."""

    results: list[dict[str, Any]] = []
    chats: dict[str, Any] = {}
    loads: list[str] = []
    for prof in profiles:
        before = os.getloadavg()[0]
        results.append(
            run_profile_eval(
                prof, n_comparedge=n_comparedge, n_chinese=n_chinese, threads=threads,
                progress=progress,
            )
        )  # fmt: skip
        if chat:
            chats[prof] = run_chat_bench(prof, threads=threads)
        loads.append(f"{prof}: load {before:.2f} → {os.getloadavg()[0]:.2f}")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs; 1-min load average " + "; ".join(loads)
    chat_part = (
        {
            "note": "Turns: " + " → ".join(" / ".join(c) for c in _chat_conversations()),
            "profiles": chats,
        }
        if chats
        else None
    )
    out = out_dir / f"{date.today().isoformat()}-copy-profiles"
    return write_profiles_report(results, chat_part, out, command, machine)


def combine(paths: Sequence[Path]) -> dict[str, Any]:
    """Shards of one profile's run (`--shard k/n`) as one result: rows in the order of
    an unsharded run, metrics recomputed over all of them."""
    parts = [json.loads(p.read_text()) for p in paths]
    rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: r["pair"])
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    out = dict(parts[0])
    out["metrics"] = summarise(rows, tasks, max(p["metrics"]["load_s"] for p in parts))
    out["failed_checks"] = _count([c for r in rows for c in r["failed_checks"]])
    out["first_failed_checks"] = _count([c for r in rows for c in r["first_failed"]])
    out["rows"] = rows
    out["shards"] = len(parts)
    return out


def _cell(x: dict[str, Any] | None) -> str:
    if x is None:
        return "-"
    t = (x["text"] or "").replace("|", "/").replace("\n", " ")
    mark = "" if x["passed"] else f" ✗ {','.join(x['failed_checks'])}"
    if x["served"] is None:
        mark += " (refused)"
    first = x.get("first_text")
    if first and x["attempts"] > 1:
        f = first.replace("|", "/").replace("\n", " ")
        mark += f" <br>*1st try ✗ {','.join(x['first_failed'])}:* {f}"
    return t + mark


def write_compare_report(
    before: dict[str, Any], after: dict[str, Any], out: Path, command: str, machine: str,
    chat: dict[str, Any] | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    """Two runs of one profile, before and after a change: both metric rows, then EVERY
    text side by side (with the failed first try where there was a retry), then chat."""
    before = {**before, "profile": f"before: {before['profile']}"}
    after = {**after, "profile": f"after: {after['profile']}"}
    json_path, md_path = write_profiles_report([before, after], None, out, command, machine)
    payload = json.loads(json_path.read_text())
    payload["chat"] = chat
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    md = md_path.read_text().split("## Sample texts side by side")[0]
    lines = ["## Every text side by side", "",
             "✗ names the checks the served text fails; *1st try* is the text a retry replaced.",
             "", "| product, task | before | after |", "|---|---|---|"]  # fmt: skip
    by_b = {(r["product_id"], r["task"]): r for r in before["rows"]}
    for r in after["rows"]:
        k = (r["product_id"], r["task"])
        lines.append(f"| {k[0]}, {k[1]} | {_cell(by_b.get(k))} | {_cell(r)} |")
    lines.append("")
    if chat:
        lines += ["## Chat answers (after)", ""]
        for t in chat.get("turns", []):
            ans = t["answer"].replace("|", "/").replace("\n", " ")
            lines.append(
                f"- **{t['message']}** ({t['answer_s']} s, template {t.get('template')}, "
                f"flags {t.get('flags')}) → {ans}"
            )
        lines.append("")
    md_path.write_text(md + "\n".join(lines) + "\n")
    return json_path, md_path


def _chat_conversations() -> list[list[str]]:
    return CONVERSATIONS


def main_profiles(argv: list[str] | None = None) -> None:
    """python -m eval.copy_eval --profile small [--n 8] --out /tmp/x.json: one profile's
    run to a JSON file (profiles run one by one, so each has the CPU to itself)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=None)
    ap.add_argument("--merge", nargs="*", type=Path, default=None, help="profile JSONs")
    ap.add_argument("--chat", nargs="*", type=Path, default=(), help="bench_chat JSONs")
    ap.add_argument("--command", default="", help="the commands that produced the JSONs")
    ap.add_argument("--machine", default="")
    ap.add_argument("--backend", default=None)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--zh", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shard", default="0/1", help="k/n: the k-th of every n texts")
    ap.add_argument("--combine", nargs="*", type=Path, default=None, help="shard JSONs")
    ap.add_argument("--compare", nargs=2, type=Path, default=None, help="before.json after.json")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.compare is not None:
        before, after = (json.loads(f.read_text()) for f in a.compare)
        before = before["profiles"][0] if "profiles" in before else before
        chat = json.loads(a.chat[0].read_text()) if a.chat else None
        write_compare_report(before, after, a.out, a.command, a.machine, chat)
        return
    if a.combine is not None:
        a.out.write_text(json.dumps(combine(a.combine), indent=2, ensure_ascii=False) + "\n")
        return
    if a.merge is not None:
        results = [json.loads(f.read_text()) for f in a.merge]
        chats = [json.loads(f.read_text()) for f in a.chat]
        chat = {
            "note": "Turns: " + " → ".join(" / ".join(c) for c in _chat_conversations()),
            "profiles": {c["profile"]: c for c in chats},
        }
        write_profiles_report(results, chat if chats else None, a.out, a.command, a.machine)
        return
    if not a.profile:
        ap.error("--profile or --merge is required")
    k, n = (int(x) for x in a.shard.split("/"))
    res = run_profile_eval(
        a.profile, a.backend, n_comparedge=a.n, n_chinese=a.zh, threads=a.threads,
        progress=lambda s: print(s, file=sys.stderr, flush=True), shard=(k, n),
    )  # fmt: skip
    a.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main_profiles()
