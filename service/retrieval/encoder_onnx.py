"""The encoder's forward pass on ONNX Runtime, for small batches (RECSMITH_ENCODER_RUNTIME).

The same float model, exported once (torch.onnx.export, TorchScript exporter) to
`<model folder>/onnx/model.onnx`: its vectors agree with torch's to ~1e-7, so the model id
stays the same. On one thread it encodes one ~70-90-token product text 1.3-1.4x faster than
torch eager (eval/results/2026-11-30-encoder-runtime.md). The export takes ~15 s for
e5-small (~4 s for MiniLM) and happens on the first use, under a file lock; `stamp.json`
names the weights it came from (size and mtime), so a rebuilt folder is exported again.

Needs `onnxruntime` and `onnx` (dependencies of the project: the default runtime "auto"
uses this path for local float models).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from service.files import file_lock

ONNX_SUBDIR = "onnx"
STAMP_VERSION = 1


def onnx_available() -> str | None:
    """None when the runtime and the exporter import; else why not (one line)."""
    try:
        # lazy: only the opt-in runtime needs them (and they are an optional extra)
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install onnxruntime onnx)"
    return None


def _stamp(model_dir: Path) -> dict[str, Any]:
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    return {
        "stamp_version": STAMP_VERSION,
        "weights": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in weights},
    }


def export_onnx(model_dir: str | Path, out: Path, attention: str = "sdpa") -> Path:
    """last_hidden_state of the folder's AutoModel for (input_ids, attention_mask), with
    dynamic batch and sequence axes. attention "eager" traces BERT's explicit softmax(QK^T)V,
    which ORT's transformer optimizer fuses into Attention nodes (not faster here)."""
    # lazy: torch takes ~5 s to import; only the export needs it
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation=attention).eval()

    class Hidden(torch.nn.Module):  # positional (ids, mask) -> last_hidden_state
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    # A padded sample: traced without padding, transformers may leave the mask out.
    sample = tok(
        ["export sample", "a second, longer sample text for the export"],
        padding=True,
        return_tensors="pt",
    )
    axes = {0: "batch", 1: "sequence"}
    # Tracer notices (a Python bool of a shape: constant for BERT with a mask, checked against
    # torch on padded, unpadded and truncated batches in the tests) and the exporter's own.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden().eval(),
            (sample["input_ids"], sample["attention_mask"]),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )
    return out


# "<model>+int8" on ONNX Runtime: the float export with its MatMul weights quantised to
# int8 per output channel (activations quantised per call: ORT's dynamic quantisation). Its
# vectors are ~0.997 cosine to the float model's (torch's per-tensor int8: ~0.976) and one
# product text encodes ~1.3x faster (eval/results/2026-11-30-encoder-int8.md). Bump the
# version when the recipe changes: it is part of the model id, so an index re-encodes.
INT8_RECIPE = "int8-ort1"


def quantize_int8(src: Path, out: Path) -> Path:
    """ORT dynamic quantisation of a float export: QInt8 weights, per channel, full range."""
    # lazy: the quantisation tool imports onnx and sympy; only an int8 model needs it
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # the tool logs a pre-processing hint at WARNING on root
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(src), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False
        )
    finally:
        root.setLevel(level)
    return out


def ensure_onnx(model_dir: str | Path, onnx_dir: Path | None = None, int8: bool = False) -> Path:
    """The folder's ONNX export (onnx_dir, default `<model_dir>/onnx/`), exported when it is
    missing or its stamp does not match the weights; one process exports, others wait.
    int8: the quantised copy of that export (`model-int8.onnx`), made the same way."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(
            f"RECSMITH_ENCODER_RUNTIME=onnx needs a local model folder, not {model_dir}"
        )
    folder = onnx_dir or model_dir / ONNX_SUBDIR
    stamp = _stamp(model_dir)
    made = _made_once(folder, "model", stamp, lambda tmp: export_onnx(model_dir, tmp))
    if not int8:
        return made
    return _made_once(
        folder,
        "model-int8",
        {**stamp, "recipe": INT8_RECIPE},
        lambda tmp: quantize_int8(made, tmp),
    )


def _made_once(folder: Path, name: str, stamp: dict[str, Any], make: Any) -> Path:
    """`folder/<name>.onnx`, made by make(tmp_path) unless its stamp file matches `stamp`;
    under a file lock, renamed into place when complete (a crash leaves no half file)."""
    path, stamp_file = folder / f"{name}.onnx", folder / f"{name.replace('model', 'stamp')}.json"

    def current() -> bool:
        return (
            path.is_file()
            and stamp_file.is_file()
            and json.loads(stamp_file.read_text()) == json.loads(json.dumps(stamp))
        )

    if current():
        return path
    with file_lock(folder / ".export.lock"):
        if current():  # another process made it meanwhile
            return path
        tmp = folder / f".{name}.{os.getpid()}.onnx"
        try:
            make(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return path


def session(path: Path, threads: int = 1) -> Any:
    """`threads` intra-op threads that sleep rather than spin when idle, no inter-op pool.
    Spinning is what made two threads collapse under load (torch's OpenMP: 0.5-1.4 s for
    one text); without it two threads were faster than one both quiet (46.6 vs 68.0 ms, a
    112-token demo text) and beside two CPU hogs (71.8 vs 109 ms; spinning: 131.6)."""
    # lazy: onnxruntime loads its shared library; only this runtime needs it
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def forward(sess: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Masked mean of last_hidden_state, L2-normalised, as Encoder._forward computes it."""
    ids = np.asarray(batch["input_ids"], dtype=np.int64)
    mask = np.asarray(batch["attention_mask"], dtype=np.int64)
    hidden = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    m = mask[..., None].astype(hidden.dtype)
    pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.clip(norm, 1e-12, None)).astype(np.float32)
