"""vLLM serves the adapter with the documented flags and scores like the in-process merge.

Opt-in (RECSMITH_TEST_VLLM_LORA=1): it starts its own vLLM server with LoRA enabled, about
two minutes on a CPU; the session's shared server runs without LoRA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from service.catalog.models import Product
from service.config import Settings
from service.llm.openai_backend import OpenAILLM
from service.llm.transformers_backend import TransformersLLM
from service.llm.vllm_server import VLLMServer, free_port
from service.ranking.adapter import load_adapter_into
from service.ranking.common import ALL_LABELS
from service.training.lora import (
    FORMAT_VERSION,
    RankExample,
    VLLMLora,
    base_fingerprint,
    prompt_messages,
    save_adapter,
)
from tests.foundation import DEMO

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("RECSMITH_TEST_VLLM_LORA") != "1",
        reason="starts its own vLLM server with LoRA (~2 min): set RECSMITH_TEST_VLLM_LORA=1",
    ),
]


def _random_adapter(model_path: Path, out: Path) -> None:
    """A rank-8 adapter with random (non-zero) B matrices: enough to move the scores."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch

    # lazy: peft pulls torch + transformers; only training/adapter loading needs it
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    manifest = {
        "format_version": FORMAT_VERSION,
        "base_model": model_path.name,
        "base_fingerprint": base_fingerprint(str(model_path)),
        "template": "rank_verbalizer",
    }
    save_adapter(model, out, {}, manifest)


def test_vllm_serves_the_adapter_like_in_process(model_path: Path, tmp_path: Path) -> None:

    adapter = tmp_path / "reranker-lora"
    _random_adapter(model_path, adapter)
    rows = [json.loads(x) for x in (DEMO / "products.jsonl").read_text().splitlines()[:30]]
    products = {p.id: p for p in (Product.model_validate(r) for r in rows)}
    ids = sorted(products)
    prompt = prompt_messages(RankExample(ids[:5], ids[5:25], ids[7]), products, 8)
    labels = list(ALL_LABELS[:20])

    local = Settings(data_dir=tmp_path, llm_model=str(model_path), llm_threads=1)
    base_local = TransformersLLM(local)
    tuned_local = load_adapter_into(base_local, adapter).choice_logprobs(prompt, labels)

    args = VLLMLora(adapter, 8).args()
    with VLLMServer(
        model_path,
        port=free_port(),
        extra_args=args,
        log_path=tmp_path / "vllm.log",
        startup_timeout_s=900,
    ) as srv:
        remote = Settings(
            data_dir=tmp_path, llm_backend="openai", llm_base_url=srv.base_url, llm_timeout_s=300
        )
        base_remote = OpenAILLM(remote)
        tuned = load_adapter_into(base_remote, adapter)
        assert tuned.model_id == "reranker"
        tuned_remote = tuned.choice_logprobs(prompt, labels)
        plain_remote = base_remote.choice_logprobs(prompt, labels)
    assert max(abs(tuned_remote[k] - tuned_local[k]) for k in labels) < 1e-3
    assert max(abs(tuned_remote[k] - plain_remote[k]) for k in labels) > 1e-2
