"""Serving the LoRA-tuned verbalizer: loading a saved adapter (DATA_DIR/models/reranker-lora,
written by `recsmith train reranker`) onto the configured base LLM. Training lives in
service/training/lora.py, which builds on this module."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.llm.transformers_backend import LoadedModel

if TYPE_CHECKING:
    from service.config import Settings
    from service.llm.base import LLM

logger = logging.getLogger(__name__)

ADAPTER_DIR = "reranker-lora"
FORMAT_VERSION = 1
SERVED_NAME = "reranker"  # the adapter's model name on vLLM (--lora-modules reranker=PATH)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class AdapterError(RuntimeError):
    """No usable adapter (missing, corrupted, or made for another base model)."""


def base_fingerprint(model_path: str) -> str:
    """What identifies the base weights: the prepared folder's source GGUF sha256 when
    recsmith prepared it, else config.json's sha256 and the weight files' sizes."""
    p = Path(model_path)
    man = p / "manifest.json"
    if man.exists():
        with contextlib.suppress(OSError, ValueError):
            sha = json.loads(man.read_text()).get("gguf_sha256")
            if sha:
                return f"gguf:{sha}"
    h = hashlib.sha256()
    if (p / "config.json").exists():
        h.update((p / "config.json").read_bytes())
        for w in sorted(p.glob("*.safetensors")):
            h.update(f"{w.name}:{w.stat().st_size}".encode())
        return f"config:{h.hexdigest()}"
    return f"id:{model_path}"


def adapter_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "models" / ADAPTER_DIR


# -- serving ---------------------------------------------------------------------------------
def read_manifest(path: Path) -> dict[str, Any]:
    """The adapter's manifest after checking its files; AdapterError says what is wrong."""
    if not (path / "manifest.json").exists():
        raise AdapterError(f"no reranker adapter in {path}: run `recsmith train reranker`")
    try:
        man = json.loads((path / "manifest.json").read_text())
        if man.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {man.get('format_version')!r}")
        for name, digest in man["sha256"].items():
            if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
                raise ValueError(f"{name} does not match its checksum")
    except Exception as e:  # noqa: BLE001
        raise AdapterError(
            f"the reranker adapter in {path} is unusable ({type(e).__name__}: {e}); "
            "retrain with `recsmith train reranker` or delete the folder"
        ) from e
    return man


_merged: dict[tuple[str, str, str], Any] = {}
_merged_lock = threading.Lock()


def load_adapter_into(llm: LLM, path: str | Path) -> LLM:
    """A backend that answers with the tuned adapter; `llm` itself is left as it is (it is
    shared through service.llm.factory's cache by copy writing and the assistant).

    transformers: the LoRA weights merged into a private copy of the base model (cached
    per adapter, so repeated calls cost nothing; merged = no adapter overhead per call).
    openai (vLLM): the same client with model name "reranker", which vLLM serves when
    started with `--enable-lora --lora-modules reranker=PATH`.
    Raises AdapterError when the adapter is missing, corrupted, or for another base model.
    """
    path = Path(path)
    man = read_manifest(path)
    if llm.backend == "openai":
        # lazy: the OpenAI backend (httpx, the client pool) adds ~0.06 s to every `recsmith`
        # command (measured --help median: 1.40 s with it at the top, 1.34 s without); only
        # an adapter served by vLLM needs it
        from service.llm.openai_backend import OpenAILLM

        return OpenAILLM(llm.settings, base_url=llm.base_url, model=SERVED_NAME)  # type: ignore[attr-defined]
    if llm.backend != "transformers":
        raise AdapterError(f"cannot load a LoRA adapter into a {llm.backend!r} backend")
    base_path = llm.model_path  # type: ignore[attr-defined]
    if base_fingerprint(base_path) != man.get("base_fingerprint"):
        raise AdapterError(
            f"the adapter in {path} was trained on {man.get('base_model')!r}, not on the "
            f"configured model {llm.model_id!r}: retrain with `recsmith train reranker`"
        )
    key = (base_path, str(path.resolve()), man["sha256"]["adapter_model.safetensors"])
    with _merged_lock:
        loaded = _merged.get(key)
        if loaded is None:
            # lazy: peft pulls torch + transformers (+6.0 s after the CLI, eval/bench_startup.py);
            # only applying an adapter needs it, not the API's start-up
            from peft import PeftModel

            m = llm.m  # type: ignore[attr-defined]
            try:
                with m.lock:
                    private = copy.deepcopy(m.model)
                tuned = PeftModel.from_pretrained(private, str(path)).merge_and_unload()
            except Exception as e:  # noqa: BLE001
                raise AdapterError(f"could not apply the adapter in {path}: {e}") from e
            tuned.eval()
            loaded = LoadedModel(
                tuned, m.tokenizer, m.path, m.dtype, threading.Lock(), m.supports_logits_to_keep
            )
            _merged[key] = loaded
    new = copy.copy(llm)
    new.m = loaded  # type: ignore[attr-defined]
    new.model_id = f"{llm.model_id}+{ADAPTER_DIR}@{key[2][:8]}"
    return new
