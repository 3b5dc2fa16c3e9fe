"""A single product upsert on real product texts: the demo catalogue (81-109 tokens for
e5-small, p50 93; bench_scale's synthetic texts are 35-42), through Application.upsert_products,
one Application per encoder variant, each on its own copy of a loaded data dir, interleaved.

    recsmith demo load                       # once, into RECSMITH_DATA_DIR (default var/)
    python -m eval.bench_upsert_demo --data var --upserts 20

Variants: torch (eager), onnx1 / onnx2 (ONNX Runtime with 1 / 2 non-spinning threads),
int8-onnx2 (e5-small+int8: ONNX Runtime's int8, 2 threads). `--cells` picks some.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from service.application import Application
from service.catalog.store import CatalogStore
from service.config import Settings
from service.retrieval.encoder import Encoder

CELLS: dict[str, dict[str, Any]] = {
    "torch": {"runtime": "torch"},
    "onnx1": {"runtime": "onnx", "onnx_threads": 1},
    "onnx2": {"runtime": "onnx", "onnx_threads": 2},
    # e5-small+int8 on ONNX Runtime's int8 (another model id: its own index)
    "int8-onnx2": {"model": "e5-small+int8", "runtime": "onnx", "onnx_threads": 2},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("var"), help="a data dir with the demo")
    ap.add_argument("--upserts", type=int, default=20)
    ap.add_argument("--cells", default=",".join(CELLS), help="comma list of " + ",".join(CELLS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    models = Settings(data_dir=args.data).models_dir or args.data / "models"
    work = Path(tempfile.mkdtemp(prefix="rs-upsert-demo-"))
    try:
        apps = {}
        cells = {k: CELLS[k] for k in args.cells.split(",")}
        for name, kw in cells.items():
            d = work / name
            d.mkdir()
            for part in ("recsmith.db", "index", "cache"):
                src = args.data / part
                if src.is_dir():
                    shutil.copytree(src, d / part)
                elif src.exists():
                    shutil.copy2(src, d / part)
            s = Settings(data_dir=d, models_dir=models)
            kw = dict(kw)
            model = kw.pop("model", "e5-small")
            apps[name] = Application(s, encoder=Encoder(model, 64, 256, None, **kw))
        first = work / next(iter(cells))
        products = list(CatalogStore(Settings(data_dir=first).db_url).iter_products())
        for app in apps.values():  # the first write syncs the index: not timed
            app.upsert_products([products[0].model_copy(update={"title": "warm up"})])
        lat: dict[str, list[float]] = {k: [] for k in cells}
        for i in range(args.upserts):
            p = products[(i * 7 + 1) % len(products)]
            for name, app in apps.items():
                new = p.model_copy(update={"title": f"{p.title} v{i}"})
                t = time.perf_counter()
                done = app.upsert_products([new])
                lat[name].append((time.perf_counter() - t) * 1000)
                assert done.index is not None and done.index.encoded == 1
        res = {
            name: {
                "p50_ms": round(statistics.median(v), 1),
                "p90_ms": round(sorted(v)[int(0.9 * len(v))], 1),
            }
            for name, v in lat.items()
        }
        res["uptime"] = os.getloadavg()
        print(json.dumps(res))
        if args.out:
            args.out.write_text(json.dumps(res, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
