"""In-process backend: a transformers causal LM, loaded once per process.

Tokenisation follows vLLM's conventions so both backends see the same token ids:
a string prompt is tokenised with the tokenizer's special tokens (`add_special_tokens=True`),
a message list is rendered with the chat template (`add_generation_prompt=True`) and then
tokenised without adding special tokens again.

Choice scoring is exact: log P(choice | prompt) = the sum of the log-probabilities of the
choice's tokens (`tokenizer(choice, add_special_tokens=False)`) appended to the prompt's
tokens. When every choice is one token (the verbalizer: "A"/"B", "yes"/"no") this is one
forward pass over the prompts, reading the last position; otherwise one forward pass over
prompt+choice sequences. Scoring only the first token would tie "yes" and "yesterday", and
the full score costs little for short choices, so we do the full score. Note that the
choice's tokens are its own: a choice meant to follow a space should start with one.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from service.config import Settings, get_settings
from service.llm.base import BatchedLLM, Generation, GenParams, LLMError, Prompt
from service.llm.prepare import resolve_model_path

# Sequences per forward pass when scoring: bounds activation memory on long batches.
SCORE_MICRO_BATCH = 16


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: str
    dtype: str
    lock: threading.Lock
    supports_logits_to_keep: bool


@lru_cache(maxsize=4)
def load_model(path: str, dtype: str = "float32", threads: int = 0) -> LoadedModel:
    """Loads a model folder (or hub id) once per process; later calls share it."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads > 0:
        torch.set_num_threads(threads)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except Exception as e:  # noqa: BLE001 - any loading failure is a configuration error
        raise LLMError(f"could not load model {path!r}: {e}") from e
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    return LoadedModel(model, tok, path, dtype, threading.Lock(), keep)


def _first_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in text, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


class TransformersLLM(BatchedLLM):
    backend = "transformers"

    def __init__(self, settings: Settings | None = None, model_path: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.model_path = model_path or resolve_model_path(self.settings)
        self.m = load_model(self.model_path, self.settings.llm_dtype, self.settings.llm_threads)
        p = Path(self.model_path)
        self.model_id = p.name if p.exists() else self.model_path

    # ---- tokenisation -------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        tok = self.m.tokenizer
        if isinstance(prompt, str):
            return list(tok(prompt)["input_ids"])
        if not getattr(tok, "chat_template", None):
            raise LLMError(f"{self.model_id} has no chat template; send a string prompt")
        text = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def _left_pad(self, seqs: Sequence[Sequence[int]]) -> tuple[Any, Any, Any]:
        # lazy: torch takes ~5 s to import; only this path needs it
        import torch

        pad = self.m.tokenizer.pad_token_id
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
                mask[i, width - len(s) :] = 1
        # Positions count real tokens only, as generate() does for left-padded batches.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids, mask, pos

    # ---- generation ---------------------------------------------------------------------
    def _gen_kwargs(self, params: GenParams) -> dict[str, Any]:
        tok = self.m.tokenizer
        kw: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": self.m.model.generation_config.eos_token_id or tok.eos_token_id,
        }
        if params.temperature > 0:
            kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kw.update(stop_strings=list(params.stop), tokenizer=tok)
        if params.repetition_penalty != 1.0:  # prompt + answer tokens, as vLLM does
            kw["repetition_penalty"] = params.repetition_penalty
        return kw

    def _eos_ids(self) -> set[int]:
        eos = self.m.model.generation_config.eos_token_id
        if eos is None:
            eos = self.m.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams | None = None
    ) -> list[Generation]:
        params = params or GenParams()
        prompts = list(prompts)
        if not prompts:
            return []
        t0 = time.perf_counter()
        if params.choices:
            scores = self.choice_logprobs_batch(prompts, params.choices)
            dt = time.perf_counter() - t0
            return [
                Generation(
                    text=max(s, key=s.__getitem__),
                    model_id=self.model_id,
                    backend=self.backend,
                    prompt_tokens=len(self.encode(p)),
                    completion_tokens=1,
                    finish_reason="stop",
                    latency_s=dt,
                    meta={"logprobs": s, "structured": "choice"},
                )
                for p, s in zip(prompts, scores, strict=True)
            ]
        # lazy: torch takes ~5 s to import; only this path needs it
        import torch

        seqs = [self.encode(p) for p in prompts]
        ids, mask, _ = self._left_pad(seqs)
        eos = self._eos_ids()
        with self.m.lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            try:
                out = self.m.model.generate(
                    input_ids=ids, attention_mask=mask, **self._gen_kwargs(params)
                )
            except Exception as e:  # noqa: BLE001
                raise LLMError(f"generation failed: {e}") from e
        dt = time.perf_counter() - t0
        width = ids.shape[1]
        results = []
        for i, seq in enumerate(seqs):
            new = out[i, width:].tolist()
            finish = "length"
            for j, t in enumerate(new):
                if t in eos:
                    new, finish = new[:j], "stop"
                    break
            text = self.m.tokenizer.decode(new, skip_special_tokens=True)
            cut = _first_stop(text, params.stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            # params.choices never gets here (scored above): only JSON output is parsed.
            results.append(self._generation(text, finish, len(seq), len(new), dt, params))
        return results

    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        """Pieces as generated; the same text as generate() for greedy decoding.

        Holds the model lock until the stream ends or is closed (don't call the same model
        from inside the loop on the same thread).
        """
        params = params or GenParams()
        if params.choices:  # nothing to stream: one of a fixed set
            yield self.generate([prompt], params)[0].text
            return
        # lazy: torch takes ~5 s to import; only this path needs it
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancel = threading.Event()

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        ids, mask, _ = self._left_pad([self.encode(prompt)])
        streamer = TextIteratorStreamer(
            self.m.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    self.m.model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancel()]),
                        **self._gen_kwargs(params),
                    )
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                errors.append(e)
                streamer.end()

        # A stop string may arrive split over pieces: hold back what could be its start.
        hold = max((len(s) for s in params.stop), default=1) - 1
        buf = ""
        self.m.lock.acquire()
        worker = threading.Thread(target=run, name="llm-stream", daemon=True)
        try:
            worker.start()
            for piece in streamer:
                buf += piece
                cut = _first_stop(buf, params.stop)
                if cut >= 0:
                    if buf[:cut]:
                        yield buf[:cut]
                    buf = ""
                    break
                if len(buf) > hold:
                    emit = buf[: len(buf) - hold] if hold else buf
                    buf = buf[len(emit) :]
                    yield emit
            else:
                if buf:
                    yield buf
            if errors:
                raise LLMError(f"generation failed: {errors[0]}") from errors[0]
        finally:
            # Stop generating at the next token (stop string hit, or the consumer left);
            # the streamer's queue is unbounded, so the worker never blocks on it.
            cancel.set()
            worker.join()
            self.m.lock.release()

    # ---- choice scoring -----------------------------------------------------------------
    def _score_choices(self, prompts: list[Prompt], choices: list[str]) -> list[dict[str, float]]:
        # lazy: torch takes ~5 s to import; only this path needs it
        import torch

        tok = self.m.tokenizer
        c_ids = [list(tok(c, add_special_tokens=False)["input_ids"]) for c in choices]
        if any(not c for c in c_ids):
            raise LLMError("a choice tokenises to nothing")
        p_ids = [self.encode(p) for p in prompts]
        out: list[dict[str, float]] = [{} for _ in p_ids]
        with self.m.lock, torch.inference_mode():
            if all(len(c) == 1 for c in c_ids):
                # The verbalizer: one pass, next-token distribution at the last position.
                first = torch.tensor([c[0] for c in c_ids])
                for s in range(0, len(p_ids), SCORE_MICRO_BATCH):
                    chunk = p_ids[s : s + SCORE_MICRO_BATCH]
                    lp = self._forward_logprobs(chunk, keep=1)[:, -1, :]
                    vals = lp[:, first].tolist()
                    for k, row in enumerate(vals):
                        out[s + k] = dict(zip(choices, row, strict=True))
                return out
            # Multi-token choices: score every prompt+choice sequence in one pass per chunk.
            pairs = [(i, j) for i in range(len(p_ids)) for j in range(len(c_ids))]
            longest = max(len(c) for c in c_ids)
            for s in range(0, len(pairs), SCORE_MICRO_BATCH):
                chunk = pairs[s : s + SCORE_MICRO_BATCH]
                seqs = [p_ids[i] + c_ids[j] for i, j in chunk]
                lp = self._forward_logprobs(seqs, keep=longest + 1)
                for row, (i, j) in enumerate(chunk):
                    c = c_ids[j]
                    # Sequences end together (left padding): the logits predicting the k
                    # choice tokens sit at kept positions longest-k .. longest-1.
                    span = lp[row, longest - len(c) : longest, :]
                    total = span.gather(-1, torch.tensor(c).unsqueeze(-1)).sum().item()
                    out[i][choices[j]] = total
        return out

    def _forward_logprobs(self, seqs: Sequence[Sequence[int]], keep: int) -> Any:
        """Log-softmax (float32) of the last `keep` positions' logits; one forward pass."""
        # lazy: torch takes ~5 s to import; only this path needs it
        import torch

        ids, mask, pos = self._left_pad(seqs)
        kw: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        if self.m.supports_logits_to_keep:
            kw["logits_to_keep"] = keep
        kw["use_cache"] = False
        try:
            logits = self.m.model(**kw).logits[:, -keep:, :]
        except Exception as e:  # noqa: BLE001
            raise LLMError(f"scoring forward pass failed: {e}") from e
        return torch.log_softmax(logits.float(), dim=-1)

    def health(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model_id": self.model_id,
            "model_path": self.model_path,
            "dtype": self.m.dtype,
            "ok": True,
        }
