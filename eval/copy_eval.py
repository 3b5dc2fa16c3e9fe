"""Copy evaluation on a real catalogue: ComparEdge (331 software products, CC-BY-4.0).

Each product's long description is summarised by recsmith's copy writer; the product's own
short description is the reference. Reported side by side with a lead baseline (the long
description's first words, cut to the same limit): grounding-check pass rate (first try
and after retries), length and language compliance, ROUGE-L F1 against the reference,
and mean latency per item.

    recsmith eval copy [--limit 40] [--max-words 25]
"""

from __future__ import annotations

import json
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from eval.datasets import SOURCES, PackagedData, fetch
from service.catalog.models import Product

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
    from service.catalog.store import CatalogStore
    from service.config import Settings, get_settings
    from service.copy.tasks import CopyOptions
    from service.copy.writer import CopyWriter

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
        from service.llm.prepare import resolve_model_path

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
