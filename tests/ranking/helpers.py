"""Helpers for the reranker tests: a small catalogue and shortlists (the fake LLM is
tests/fakes.py's)."""

from __future__ import annotations

import json
from pathlib import Path

from service.catalog.models import Product
from service.retrieval.retriever import Candidate

DEMO = Path(__file__).resolve().parents[2] / "service" / "demo" / "products.jsonl"

# Used only if the demo catalogue is missing: enough products for 30-candidate windows.
_INLINE = [
    ("Cast Iron Skillet, 26 cm", "Kitchen"),
    ("Carbon Steel Wok, 32 cm", "Kitchen"),
    ("Chef's Knife, 20 cm", "Kitchen"),
    ("Espresso Machine with Steam Wand", "Coffee & Tea"),
    ("Conical Burr Grinder", "Coffee & Tea"),
    ("Trail Running Shoes", "Running"),
    ("Two-Person Dome Tent", "Outdoor & Camping"),
    ("Noise-Cancelling Headphones", "Audio"),
    ("Ergonomic Office Chair", "Home Office"),
    ("Adjustable Dumbbells, 24 kg", "Fitness"),
]


def load_catalogue() -> dict[str, Product]:
    if DEMO.exists():
        products = [Product(**json.loads(line)) for line in DEMO.open() if line.strip()]
    else:
        products = [
            Product(id=f"p{i:03d}", title=f"{t} #{i // len(_INLINE)}", category=c, brand="Acme")
            for i, (t, c) in ((i, _INLINE[i % len(_INLINE)]) for i in range(40))
        ]
    return {p.id: p for p in products}


def shortlist(catalogue: dict[str, Product], n: int, offset: int = 10) -> list[Candidate]:
    """n candidates with decreasing retrieval scores (the injection product included)."""
    ids = list(catalogue)[offset : offset + n]
    assert len(ids) == n, "catalogue too small"
    return [Candidate(pid, round(1.0 / (i + 1), 4), {"dense": 0.5}) for i, pid in enumerate(ids)]
