"""LlamaRec tuning of the verbalizer's LLM with LoRA, and loading the adapter for serving.

Examples: for a user whose distinct items are s (time order), the training part is
T = s[:-2] (validation and test targets are never trained on). The prompt history is
T[:-1], the answer is T[-1], and the candidates are the retriever's top-k for that history
with the answer put in (replacing the last candidate) when missing, then shuffled with a
seeded RNG, so the answer's label is uniform over A..T. The prompt is exactly what the
verbalizer sends (`service.ranking.verbalizer.build_prompt` over prompts/rank_verbalizer.j2,
through the model's chat template, as TransformersLLM.encode tokenises it).

Loss: at the position right after the prompt (the one the verbalizer reads at serving
time) and nothing else, the cross-entropy of the answer's label over the labels shown
(`label_loss`: a log-softmax over the 20 label tokens, the served scoring), so every
gradient step is about the answer's rank among the candidates, not about answering with a
letter at all; `loss="vocab"` is the full-vocabulary cross-entropy of earlier runs. Only
LoRA weights train (peft); optionally only in the top `layers` blocks, which also cuts the backward
pass to those blocks (a CPU run's main cost).

Artefacts in DATA_DIR/models/reranker-lora/: the peft adapter (adapter_config.json,
adapter_model.safetensors — the folder vLLM's `--lora-modules reranker=PATH` takes),
metrics.json, manifest.json (base model id and fingerprint, template version), and
checkpoints/latest.pt (LoRA weights + optimizer + step) from which a re-run continues.

Serving: in-process, `load_adapter_into(llm, path)` (or `reranker_llm(settings)`, which
falls back to the base model) merges the adapter into a private copy of the model. On vLLM,
start the server with the base model and
    --enable-lora --lora-modules reranker=DATA_DIR/models/reranker-lora --max-lora-rank 8
(`VLLMLora(path, r).args()`, e.g. as VLLMServer(extra_args=...)); the base model stays
served under its usual name and `load_adapter_into(OpenAILLM)` asks for model "reranker".
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from service.catalog.models import Product
    from service.config import Settings
    from service.llm.base import LLM

# The inference side (adapter format, loading onto the base model) is the serving module's.
from service.artefacts import Artefacts  # noqa: E402
from service.config import get_settings  # noqa: E402
from service.llm.factory import get_llm  # noqa: E402
from service.llm.prepare import resolve_model_path
from service.prompts import library
from service.ranking.adapter import (  # noqa: E402
    ADAPTER_FILES,
    FORMAT_VERSION,
    SERVED_NAME,
    AdapterError,
    adapter_dir,
    base_fingerprint,
)
from service.ranking.base import UserContext
from service.ranking.common import ALL_LABELS, Item, product_text
from service.ranking.verbalizer import VerbalizerReranker, build_prompt
from service.training.sequential import train_threads
from service.vocab import RankerLoss, choices

logger = logging.getLogger(__name__)


@dataclass
class LoraTrainConfig:
    examples: int = 300  # training prompts (a seeded sample of users, one prompt each)
    val_examples: int = 50
    candidates: int = 20  # LlamaRec's shortlist: labels A..T, one verbalizer window
    max_history: int = 8  # the verbalizer's default
    epochs: int = 1
    lr: float = 5e-4
    batch_size: int = 8  # prompts per optimizer step (gradient accumulation)
    micro_batch: int = 1  # prompts per forward pass (raise on a GPU)
    warmup: float = 0.05
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    layers: int | None = None  # adapters only in the top N blocks (None = all)
    checkpoint_every: int = 5  # optimizer steps
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU torch threads; 0 = auto (service.training.sequential.train_threads)
    loss: RankerLoss = RankerLoss.labels


@dataclass
class RankExample:
    history: list[str]  # product ids, oldest first
    candidates: list[str]  # in prompt order
    target: str

    @property
    def label_index(self) -> int:
        return self.candidates.index(self.target)


@dataclass
class StepReport:
    step: int
    total_steps: int
    loss: float
    elapsed_s: float
    note: str = ""


# -- examples --------------------------------------------------------------------------------
Retrieve = Callable[[list[str], int], list[str]]


def make_example(
    history: list[str], target: str, retrieve: Retrieve, k: int, rng: random.Random
) -> RankExample:
    cands = [p for p in dict.fromkeys(retrieve(history, k)) if p not in set(history)][:k]
    if target not in cands:
        cands = cands[: k - 1] + [target]  # LlamaRec: the ground truth is always among them
    rng.shuffle(cands)  # else the answer would sit where the retriever put it
    return RankExample(list(history), cands, target)


def build_examples(
    sequences: Sequence[list[str]],
    retrieve: Retrieve,
    n_train: int,
    n_val: int,
    k: int = 20,
    seed: int = 0,
    max_context: int = 50,
) -> tuple[list[RankExample], list[RankExample]]:
    """Training examples (history T[:-1] -> T[-1]) and validation examples (history T ->
    the validation item s[-2]) from disjoint seeded user samples; T = s[:-2]. Users need 4
    distinct items. `max_context`: the most recent items handed to the retriever."""
    eligible = [s for s in sequences if len(s) >= 4]
    rng = random.Random(seed)
    order = list(range(len(eligible)))
    rng.shuffle(order)
    train_rows, val_rows = order[:n_train], order[n_train : n_train + n_val]
    if len(train_rows) < n_train:  # small logs: validate on the training users' next item
        val_rows = order[:n_val]
    train, val = [], []
    for r in train_rows:
        t = eligible[r][:-2]
        train.append(make_example(t[:-1][-max_context:], t[-1], retrieve, k, rng))
    for r in val_rows:
        t = eligible[r][:-2]
        val.append(make_example(t[-max_context:], eligible[r][-2], retrieve, k, rng))
    return train, val


def shuffled_pass(examples: Sequence[RankExample], epoch: int, seed: int) -> list[RankExample]:
    """The examples as pass `epoch` shows them: pass 0 as built, every later pass with each
    prompt's candidates in a new seeded order, so an answer is not learnt at one label
    (position bias) and every pass adds prompts the model has not seen."""
    if epoch == 0:
        return list(examples)
    rng = random.Random(seed * 1_000_003 + epoch)
    out = []
    for e in examples:
        cands = list(e.candidates)
        rng.shuffle(cands)
        out.append(RankExample(list(e.history), cands, e.target))
    return out


def prompt_messages(
    ex: RankExample, products: dict[str, Product], max_history: int
) -> list[dict[str, str]]:
    """The verbalizer's own prompt for this example (one window, labels A..)."""
    hist = [products[p] for p in ex.history if p in products]
    items = [
        Item(ALL_LABELS[i], product_text(products.get(p), p)) for i, p in enumerate(ex.candidates)
    ]
    return build_prompt(UserContext(history=hist), items, max_history)[0]


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids exactly as TransformersLLM.encode makes them (and vLLM's chat endpoint)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(messages[0]["content"])["input_ids"])


def label_token_ids(tokenizer: Any, n: int) -> list[int]:
    ids = []
    for lab in ALL_LABELS[:n]:
        t = tokenizer(lab, add_special_tokens=False)["input_ids"]
        if len(t) != 1:
            raise AdapterError(f"label {lab!r} is {len(t)} tokens for this tokenizer, not 1")
        ids.append(t[0])
    return ids


# -- model helpers -------------------------------------------------------------------------
def pick_device(requested: str = "auto") -> str:
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _left_pad(seqs: Sequence[Sequence[int]], pad: int, device: str) -> tuple[Any, Any, Any]:
    """Left padding with positions counting real tokens only (as TransformersLLM does)."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def answer_logits(model: Any, seqs: Sequence[Sequence[int]], pad: int, device: str) -> Any:
    """[b, vocab] logits at the position right after each prompt: where the label goes."""
    ids, mask, pos = _left_pad(seqs, pad, device)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1
    )
    return out.logits[:, -1, :].float()


def label_loss(logits: Any, label_ids: Sequence[int], answers: Sequence[int]) -> Any:
    """Summed cross-entropy of each answer over the label tokens only: -log_softmax of the
    label logits (what the verbalizer renormalises at serving time) at the answer's label.
    Logits of other tokens do not enter, so probability mass moved between non-labels
    (or from all labels to a non-label) costs nothing; only the answer's rank does."""
    # lazy: torch (+1.3 s, eval/results/2026-11-30-imports.md); only training needs it
    import torch

    lab = torch.log_softmax(logits[:, list(label_ids)], dim=-1)
    idx = torch.tensor(list(answers), device=lab.device)
    return -lab[torch.arange(len(idx), device=lab.device), idx].sum()


def _evaluate(
    model: Any,
    encoded: Sequence[tuple[list[int], int]],
    label_ids: list[int],
    pad: int,
    device: str,
    micro_batch: int,
) -> dict[str, float]:
    """Over the labels shown (as the verbalizer renormalises): accuracy, NDCG@10, MRR and
    the mean answer log-probability, ground truth always among the candidates."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch

    if not encoded:
        return {}
    ranks, lps = [], []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(encoded), micro_batch):
            chunk = encoded[start : start + micro_batch]
            logits = answer_logits(model, [c[0] for c in chunk], pad, device)
            lab = torch.log_softmax(logits[:, label_ids], dim=-1)
            for row, (_ids, ans) in enumerate(chunk):
                s = lab[row]
                ranks.append(1 + int((s > s[ans]).sum()))
                lps.append(float(s[ans]))
    r = np.array(ranks, dtype=np.float64)
    return {
        "accuracy": float(np.mean(r == 1)),
        "ndcg@10": float(np.mean(np.where(r <= 10, 1 / np.log2(r + 1), 0.0))),
        "mrr": float(np.mean(1 / r)),
        "answer_logprob": float(np.mean(lps)),
        "examples": len(r),
    }


# -- training ------------------------------------------------------------------------------
def _fingerprint(cfg: LoraTrainConfig, examples: Sequence[RankExample], base: str) -> str:
    h = hashlib.sha256()
    keep = {
        k: v
        for k, v in asdict(cfg).items()
        if k not in ("max_minutes", "checkpoint_every", "device", "threads")
    }
    h.update(json.dumps(keep, sort_keys=True, default=list).encode())
    h.update(base.encode())
    for ex in examples:
        h.update(json.dumps([ex.history, ex.candidates, ex.target]).encode())
    return h.hexdigest()


def train_reranker(
    train: Sequence[RankExample],
    val: Sequence[RankExample],
    products: dict[str, Product],
    settings: Settings,
    progress: Callable[[StepReport], None] | None = None,
    config: LoraTrainConfig | None = None,
    model_path: str | None = None,
    out_dir: Path | None = None,
    fresh: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """LoRA-tune the verbalizer's LLM; resumes from out_dir/checkpoints/latest.pt when it
    was made for the same configuration and examples (fresh=True ignores it)."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from peft import set_peft_model_state_dict as set_lora
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config or LoraTrainConfig()
    if cfg.loss not in set(RankerLoss):
        raise AdapterError(f"loss must be one of {choices(RankerLoss)}, not {cfg.loss!r}")
    if not train:
        raise AdapterError("no training examples (users need 4 or more distinct items)")
    t0 = time.perf_counter()
    out = out_dir or adapter_dir(settings)
    ckpt_dir = out / "checkpoints"
    path = model_path or resolve_model_path(settings)
    device = pick_device(cfg.device)
    prev_threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(train_threads(cfg.threads))
    torch.manual_seed(cfg.seed)

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    n_layers = int(base.config.num_hidden_layers)
    layers = None
    if cfg.layers is not None and cfg.layers < n_layers:
        layers = list(range(n_layers - cfg.layers, n_layers))
    lcfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lcfg).to(device)
    label_ids = label_token_ids(tok, cfg.candidates)
    pad = tok.pad_token_id

    def encode(exs: Sequence[RankExample]) -> list[tuple[list[int], int]]:
        return [
            (encode_prompt(tok, prompt_messages(e, products, cfg.max_history)), e.label_index)
            for e in exs
        ]

    enc_train, enc_val = encode(train), encode(val)
    fp = _fingerprint(cfg, train, base_fingerprint(path))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(enc_train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total_steps))

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 10 %
        if step < warm:
            return (step + 1) / warm
        return max(0.1, 1 - 0.9 * (step - warm) / max(1, total_steps - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    step, losses, resumed_from = 0, [], None
    val_before: dict[str, float] | None = None
    state_path = ckpt_dir / "latest.pt"
    if state_path.exists() and not fresh:
        try:
            st = torch.load(state_path, map_location=device, weights_only=False)
            if st.get("fingerprint") == fp:
                set_lora(model, st["lora"])
                opt.load_state_dict(st["optimizer"])
                sched.load_state_dict(st["scheduler"])
                step, losses, resumed_from = st["step"], st["losses"], st["step"]
                val_before = st.get("val_before")
            else:
                logger.warning(
                    "checkpoint %s is for other examples/settings: starting over", state_path
                )
        except Exception as e:  # noqa: BLE001 - a broken checkpoint only costs the restart
            logger.warning("checkpoint %s unreadable (%s): starting over", state_path, e)

    def save_checkpoint() -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_dir / f".latest.pt.tmp-{os.getpid()}"
        torch.save(
            {
                "fingerprint": fp,
                "lora": get_peft_model_state_dict(model),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "losses": losses,
                "val_before": val_before,
            },
            tmp,
        )
        tmp.replace(state_path)

    use_amp = device == "cuda"
    if resumed_from is None:
        if progress:
            progress(
                StepReport(
                    0,
                    total_steps,
                    math.nan,
                    time.perf_counter() - t0,
                    f"scoring {len(enc_val)} validation prompts (before)",
                )
            )
        val_before = _evaluate(model, enc_val, label_ids, pad, device, cfg.micro_batch)
    stopped = "done"
    try:
        encoded_epoch = 0
        while step < total_steps:
            epoch, k = divmod(step, steps_per_epoch)
            if epoch != encoded_epoch:  # a new pass: the candidates in a new order
                enc_train, encoded_epoch = encode(shuffled_pass(train, epoch, cfg.seed)), epoch
            order = np.random.default_rng(cfg.seed + epoch).permutation(len(enc_train))
            batch = [enc_train[i] for i in order[k * cfg.batch_size : (k + 1) * cfg.batch_size]]
            model.train()
            opt.zero_grad(set_to_none=True)
            total = 0.0
            batch.sort(key=lambda e: len(e[0]))  # similar lengths share a pass: less padding
            for s in range(0, len(batch), cfg.micro_batch):
                mb = batch[s : s + cfg.micro_batch]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    logits = answer_logits(model, [ids for ids, _ in mb], pad, device)
                if cfg.loss == RankerLoss.vocab:  # full-vocabulary CE on the answer token
                    target = torch.tensor([label_ids[a] for _, a in mb], device=device)
                    loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
                else:
                    loss = label_loss(logits, label_ids, [a for _, a in mb])
                (loss / len(batch)).backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(total / len(batch))
            elapsed = time.perf_counter() - t0
            if progress:
                progress(StepReport(step, total_steps, losses[-1], elapsed))
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                save_checkpoint()
            if (
                cfg.max_minutes is not None
                and elapsed >= cfg.max_minutes * 60
                and step < total_steps
            ):
                save_checkpoint()
                stopped = "time"
                break
    finally:
        if device == "cpu":
            torch.set_num_threads(prev_threads)
    train_s = time.perf_counter() - t0
    if progress:
        progress(
            StepReport(
                step,
                total_steps,
                math.nan,
                train_s,
                f"scoring {len(enc_val)} validation prompts (after)",
            )
        )
    val_after = _evaluate(model, enc_val, label_ids, pad, device, cfg.micro_batch)
    metrics: dict[str, Any] = {
        "val_before": val_before,
        "val_after": val_after,
        "steps": step,
        "total_steps": total_steps,
        "complete": step >= total_steps,
        "stopped": stopped,
        "resumed_from_step": resumed_from,
        "train_s": round(train_s, 1),
        "examples": len(enc_train),
        "prompts_trained": min(step * cfg.batch_size, len(enc_train) * cfg.epochs),
        "val_examples": len(enc_val),
        "prompt_tokens_mean": round(float(np.mean([len(i) for i, _ in enc_train])), 1),
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-5:])) if losses else None,
        "losses": [round(x, 4) for x in losses],
        "device": device,
        "config": asdict(cfg),
        "val_note": "ground truth inserted among the candidates; ranks over the labels shown",
        **(extra or {}),
    }
    tpl = library()
    manifest = {
        "format_version": FORMAT_VERSION,
        "base_model": Path(path).name if Path(path).exists() else path,
        "base_model_path": path,
        "base_fingerprint": base_fingerprint(path),
        "template": "rank_verbalizer",
        "template_version": tpl.version("rank_verbalizer"),
        "labels": cfg.candidates,
        "fingerprint": fp,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    save_adapter(model, out, metrics, manifest)
    metrics["path"] = str(out)
    return metrics


def save_adapter(model: Any, out: Path, metrics: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Adapter files first, the manifest (with their checksums) last: a manifest always
    describes complete files."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".adapter.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        (out / "manifest.json").unlink(missing_ok=True)
        for name in ADAPTER_FILES:
            (tmp / name).replace(out / name)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        manifest = {
            **manifest,
            "sha256": {
                n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in ADAPTER_FILES
            },
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reranker_llm(settings: Settings | None = None) -> LLM:
    """The verbalizer's backend as the service loads it (service/artefacts.py): the
    configured LLM with the tuned adapter when one is saved and fits it, else the base."""
    s = settings or get_settings()
    return Artefacts(s, strict=False).ranker_llm(get_llm(s))


def tuned_verbalizer(settings: Settings | None = None, **opts: Any) -> Any:
    """A VerbalizerReranker over `reranker_llm` (loaded on its first rank call)."""
    r = VerbalizerReranker(lambda: reranker_llm(settings), **opts)
    r.name = "verbalizer+lora"
    return r


@dataclass
class VLLMLora:
    """How to serve the adapter on vLLM (documented here, used by the CLI's hint)."""

    path: Path
    rank: int = 8
    extra_args: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        rank = 8
        while rank < self.rank:  # vLLM takes powers of two (8, 16, 32, …)
            rank *= 2
        return [
            "--enable-lora",
            "--lora-modules",
            f"{SERVED_NAME}={self.path}",
            "--max-lora-rank",
            str(rank),
            *self.extra_args,
        ]
