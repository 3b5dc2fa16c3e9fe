"""Encoding many product texts (an import, a re-index): texts/s of torch's batches, ONNX
Runtime's float model and ONNX Runtime's int8 model, on the demo catalogue's real texts,
side by side in one run (rounds interleaved), no embedding cache.

    recsmith demo load                       # once, into RECSMITH_DATA_DIR (default var/)
    python -m eval.bench_encode_bulk --data var --rounds 3

Cells: torch (Encoder runtime "torch", batches of 64 on the process's threads), onnx (the
same float model on ORT, calls of ONNX_BATCH texts), int8-onnx (e5-small+int8: ORT's int8,
each text alone). The float cells must agree (max |diff| is printed); int8 is another model
(its cosine to the float vectors is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from service.catalog.store import CatalogStore
from service.config import Settings
from service.retrieval.encoder import Encoder

CELLS = {
    "torch": ("e5-small", "torch"),
    "onnx": ("e5-small", "onnx"),
    "int8-onnx": ("e5-small+int8", "onnx"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("var"), help="a data dir with the demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    store = CatalogStore(Settings(data_dir=args.data).db_url)
    texts = [p.embedding_text() for p in store.iter_products()]
    encoders = {name: Encoder(model, runtime=rt) for name, (model, rt) in CELLS.items()}
    rates: dict[str, list[float]] = {name: [] for name in CELLS}
    vecs: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        names = list(CELLS)[r % len(CELLS) :] + list(CELLS)[: r % len(CELLS)]  # rotate
        for name in names:
            t = time.perf_counter()
            vecs[name] = encoders[name].encode_passages(texts)
            rates[name].append(len(texts) / (time.perf_counter() - t))
    res: dict[str, object] = {
        name: {"texts_per_s": round(statistics.median(v), 1), "rounds": [round(x, 1) for x in v]}
        for name, v in rates.items()
    }
    res["texts"] = len(texts)
    res["onnx_vs_torch_max_abs_diff"] = float(np.abs(vecs["onnx"] - vecs["torch"]).max())
    cos = (vecs["int8-onnx"] * vecs["torch"]).sum(1)
    res["int8_cosine_to_float"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    res["onnx_over_torch"] = round(
        statistics.median(rates["onnx"]) / statistics.median(rates["torch"]), 2
    )
    res["int8_over_torch"] = round(
        statistics.median(rates["int8-onnx"]) / statistics.median(rates["torch"]), 2
    )
    res["loadavg"] = os.getloadavg()
    print(json.dumps(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
