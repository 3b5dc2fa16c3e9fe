"""CPU seconds per LoRA training prompt of the verbalizer (issue 11 item 3): what a bounded
CPU run can afford, measured before spending it.

The first 16 training prompts of a cases file (service.training.rerank_data, the served
prompt through the model's chat template), one optimizer batch of 8, forward + backward with
the label loss (service.training.lora.label_loss), for adapters in the top N blocks and
micro-batch sizes side by side in one run, then one batched inference pass of the same
8 prompts (the floor: a forward pass is needed anyway).

    OMP_WAIT_POLICY=PASSIVE python -m eval.bench_lora_step --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from service.config import Settings
from service.llm.prepare import resolve_model_path
from service.offline.datasets import load
from service.training.lora import (
    RankExample,
    answer_logits,
    encode_prompt,
    label_loss,
    label_token_ids,
    prompt_messages,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=Path("var/ml-100k-pipeline/cases.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="8x4,8x1,4x4,2x4,30x4", help="layers x micro-batch")
    args = ap.parse_args(argv)
    # lazy: torch/peft/transformers take seconds to import; only this benchmark needs them
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    cases = json.loads(args.cases.read_text())["train"][:8]
    products = {p.id: p for p in load("ml-100k").products}
    path = resolve_model_path(Settings())
    tok = AutoTokenizer.from_pretrained(path)
    exs = [RankExample(c["history"], c["candidates"], c["target"]) for c in cases]
    enc = [(encode_prompt(tok, prompt_messages(e, products, 8)), e.label_index) for e in exs]
    labels = label_token_ids(tok, 20)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    print(f"prompt tokens {[len(i) for i, _ in enc]}; loadavg {os.getloadavg()}")
    model = None
    for spec in args.configs.split(","):
        layers, micro = (int(x) for x in spec.split("x"))
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        n = int(base.config.num_hidden_layers)
        cfg = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            layers_to_transform=list(range(n - layers, n)) if layers < n else None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, cfg)
        model.train()
        c0, w0 = time.process_time(), time.perf_counter()
        for s in range(0, len(enc), micro):
            mb = enc[s : s + micro]
            logits = answer_logits(model, [i for i, _ in mb], pad, "cpu")
            label_loss(logits, labels, [a for _, a in mb]).backward()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        print(
            f"adapters in top {layers} blocks, micro-batch {micro}: "
            f"{cpu / len(enc):.2f} CPU-s, {wall / len(enc):.2f} wall-s per prompt"
        )
    assert model is not None
    model.eval()
    with torch.inference_mode():
        c0, w0 = time.process_time(), time.perf_counter()
        answer_logits(model, [i for i, _ in enc], pad, "cpu")
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    print(f"inference, 8 prompts batched: {cpu / 8:.2f} CPU-s, {wall / 8:.2f} wall-s per prompt")
    print(f"loadavg {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
