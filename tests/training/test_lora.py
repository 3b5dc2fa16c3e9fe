"""LoRA tuning of the verbalizer: the training prompt and answer position are exactly what
the verbalizer scores, training raises the answer's probability, the adapter reloads with
the same scores, a re-run resumes from the checkpoint, a broken adapter falls back.

A tiny random Llama with SmolLM2's tokenizer and chat template stands in for the model
(the tokenizer of the prepared SmolLM2 folder; the tests skip without it)."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.catalog.models import Product
from service.config import Settings, get_settings
from service.llm.transformers_backend import TransformersLLM
from service.ranking.adapter import adapter_dir, load_adapter_into, read_manifest
from service.ranking.base import UserContext
from service.ranking.common import ALL_LABELS, Item, product_text
from service.ranking.verbalizer import build_prompt
from service.retrieval.retriever import Candidate
from service.training.cli import train_app
from service.training.lora import (
    AdapterError,
    LoraTrainConfig,
    RankExample,
    build_examples,
    encode_prompt,
    label_loss,
    prompt_messages,
    reranker_llm,
    shuffled_pass,
    train_reranker,
    tuned_verbalizer,
)
from tests.foundation import DEMO, REPO, make_recsmith

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _tokenizer_source() -> Path | None:
    for root in (REPO / "var" / "models", Settings().data_dir / "models"):
        p = root / "smollm2-135m-instruct"
        if (p / "tokenizer.json").exists():
            return p
    return None


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    src = _tokenizer_source()
    if src is None:
        pytest.skip("needs the prepared SmolLM2 tokenizer (`recsmith models prepare`)")
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch

    # lazy: transformers takes ~3 s to import; only this path needs it
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llm")
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    tok = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.2,  # embeddings big enough for a confident answer after RMSNorm
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def products() -> dict[str, Product]:
    rows = [json.loads(line) for line in (DEMO / "products.jsonl").read_text().splitlines()]
    return {p.id: p for p in (Product.model_validate(r) for r in rows[:60])}


@pytest.fixture(scope="module")
def examples(products: dict[str, Product]) -> list[RankExample]:
    ids = sorted(products)
    rng = random.Random(1)
    seqs = [rng.sample(ids, 8) for _ in range(12)]
    train, _val = build_examples(seqs, lambda h, k: ids[:k], n_train=6, n_val=0, k=20, seed=0)
    return train


def _settings(tmp: Path, model: str) -> Settings:
    s = Settings(data_dir=tmp, llm_model=model, database_url=f"sqlite:///{tmp}/db.sqlite")
    s.ensure_dirs()
    return s


def _cfg(**kw: object) -> LoraTrainConfig:
    base = dict(
        examples=6,
        val_examples=6,
        lr=5e-2,
        batch_size=2,
        epochs=4,
        r=4,
        alpha=8,
        dropout=0.0,
        target_modules=(
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ),
        checkpoint_every=2,
        threads=1,
        device="cpu",
    )
    return LoraTrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_examples_follow_the_llamarec_recipe(products: dict[str, Product]) -> None:
    ids = sorted(products)
    seqs = [ids[i : i + 6] for i in range(10)]
    train, val = build_examples(seqs, lambda h, k: ids[-k:], n_train=5, n_val=3, k=20, seed=3)
    assert len(train) == 5 and len(val) == 3
    for ex in train + val:
        assert len(ex.candidates) == 20 and ex.target in ex.candidates
        assert not set(ex.history) & set(ex.candidates)
    seq_of = {tuple(s[:-2][:-1]): s for s in seqs}
    for ex in train:  # history T[:-1] -> T[-1], where T = s[:-2]: val/test never trained on
        s = seq_of[tuple(ex.history)]
        assert ex.target == s[-3]
    # ground truth missing from the retrieval list -> inserted; labels spread by the shuffle
    assert len({ex.label_index for ex in train + val}) > 1
    again, _ = build_examples(seqs, lambda h, k: ids[-k:], n_train=5, n_val=3, k=20, seed=3)
    assert [e.candidates for e in again] == [e.candidates for e in train]  # seeded


def test_later_passes_show_the_candidates_in_new_orders(products: dict[str, Product]) -> None:
    """Shuffled passes against position bias: pass 0 is the prompts as built; each later
    pass keeps every prompt's history, answer and candidate set, in a new seeded order."""
    ids = sorted(products)
    exs = [RankExample(ids[:3], ids[3 + i : 23 + i], ids[10 + i]) for i in range(12)]
    assert shuffled_pass(exs, 0, seed=0) == exs
    one, two = shuffled_pass(exs, 1, seed=0), shuffled_pass(exs, 2, seed=0)
    for a, b, c in zip(exs, one, two, strict=True):
        assert b.history == a.history and b.target == a.target
        assert sorted(b.candidates) == sorted(a.candidates) == sorted(c.candidates)
    moved = [a.label_index != b.label_index for a, b in zip(exs, one, strict=True)]
    assert sum(moved) >= 9  # the answer sits at another label in (nearly) every prompt
    assert [e.candidates for e in one] != [e.candidates for e in two]
    assert shuffled_pass(exs, 1, seed=0) == one  # seeded


def test_prompt_is_the_verbalizers(
    tiny_model: str, tmp_path: Path, examples: list[RankExample], products: dict[str, Product]
) -> None:
    llm = TransformersLLM(_settings(tmp_path, tiny_model))
    msgs = prompt_messages(examples[0], products, max_history=8)
    assert encode_prompt(llm.m.tokenizer, msgs) == llm.encode(msgs)
    # The verbalizer builds the same messages from the same inputs.

    ex = examples[0]
    items = [Item(ALL_LABELS[i], product_text(products[p], p)) for i, p in enumerate(ex.candidates)]
    user = UserContext(history=[products[p] for p in ex.history])
    assert build_prompt(user, items, 8)[0] == msgs


def test_tuning_raises_the_answer_probability_and_reloads_exactly(
    tiny_model: str, tmp_path: Path, examples: list[RankExample], products: dict[str, Product]
) -> None:
    settings = _settings(tmp_path, tiny_model)
    # The label loss moves only the answer's share among the 20 labels (a smaller gradient
    # than the full-vocabulary CE): 8 passes to show a clear gain on this random model.
    m = train_reranker(examples, examples, products, settings, config=_cfg(epochs=8), fresh=True)
    assert m["complete"] and m["steps"] == m["total_steps"] == 24
    # (No claim on the training loss's trend: every later pass reshuffles the candidates, so
    # what this tiny model memorises about pass 0's label positions costs it on pass 1.)
    assert m["val_after"]["answer_logprob"] > m["val_before"]["answer_logprob"] + 0.5
    assert len(m["losses"]) == 24 and m["prompts_trained"] == 24 * 2
    man = read_manifest(adapter_dir(settings))
    assert man["template"] == "rank_verbalizer" and man["base_model"] == Path(tiny_model).name

    # In-process serving: the merged adapter gives the scores measured after training.
    base = TransformersLLM(settings)
    tuned = load_adapter_into(base, adapter_dir(settings))
    assert tuned.model_id.startswith(base.model_id + "+reranker-lora@")
    assert tuned.m.model is not base.m.model  # the shared base model is untouched
    labels = list(ALL_LABELS[:20])
    got = []
    for ex in examples:
        lp = tuned.choice_logprobs(prompt_messages(ex, products, 8), labels)
        import math

        lse = math.log(sum(math.exp(v) for v in lp.values()))
        got.append(lp[labels[ex.label_index]] - lse)
    assert sum(got) / len(got) == pytest.approx(m["val_after"]["answer_logprob"], abs=1e-3)
    assert reranker_llm(settings).model_id == tuned.model_id

    # The verbalizer over the tuned model ranks without degrading.
    ex = examples[0]
    result = tuned_verbalizer(settings).rank(
        UserContext(history=[products[p] for p in ex.history]),
        [Candidate(p, 1.0) for p in ex.candidates],
        products,
    )
    assert not result.degraded and result.model_id == tuned.model_id
    assert sorted(p for p, _ in result.order) == sorted(ex.candidates)


def test_rerun_resumes_from_the_checkpoint(
    tiny_model: str, tmp_path: Path, examples: list[RankExample], products: dict[str, Product]
) -> None:
    settings = _settings(tmp_path, tiny_model)
    val = examples[:2]
    first = train_reranker(
        examples, val, products, settings, config=_cfg(epochs=2, max_minutes=0.0), fresh=True
    )
    assert first["stopped"] == "time" and first["steps"] == 1 and not first["complete"]
    assert (adapter_dir(settings) / "checkpoints" / "latest.pt").exists()
    second = train_reranker(examples, val, products, settings, config=_cfg(epochs=2))
    assert second["resumed_from_step"] == 1 and second["complete"] and second["steps"] == 6
    assert second["val_before"] == first["val_before"]
    assert second["losses"][0] == first["losses"][0]  # step 1 is kept, not redone
    # Other examples: the checkpoint does not apply, training starts over.
    third = train_reranker(examples[:4], val, products, settings, config=_cfg(epochs=1))
    assert third["resumed_from_step"] is None


def test_broken_or_foreign_adapter_falls_back(
    tiny_model: str,
    tmp_path: Path,
    examples: list[RankExample],
    products: dict[str, Product],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = _settings(tmp_path, tiny_model)
    with pytest.raises(AdapterError, match="recsmith train reranker"):
        read_manifest(adapter_dir(settings))
    base = TransformersLLM(settings)
    assert reranker_llm(settings).model_id == base.model_id  # no adapter: the base model

    train_reranker(examples[:2], [], products, settings, config=_cfg(epochs=1), fresh=True)
    weights = adapter_dir(settings) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(AdapterError, match="checksum"):
        load_adapter_into(base, adapter_dir(settings))
    with caplog.at_level(logging.WARNING):
        assert reranker_llm(settings).model_id == base.model_id
    assert "verbalizer uses the base model" in caplog.text

    man_path = adapter_dir(settings) / "manifest.json"
    train_reranker(examples[:2], [], products, settings, config=_cfg(epochs=1), fresh=True)
    man = json.loads(man_path.read_text())
    man_path.write_text(json.dumps({**man, "base_fingerprint": "gguf:other"}))
    with pytest.raises(AdapterError, match="trained on"):
        load_adapter_into(base, adapter_dir(settings))


def test_cli_tunes_on_the_store_log_with_the_service_retriever(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    make_recsmith(tmp_path)  # the demo catalogue and log, indexed
    monkeypatch.setenv("RECSMITH_LLM_MODEL", tiny_model)
    get_settings.cache_clear()
    try:
        args = [
            "reranker",
            "--data-dir",
            str(tmp_path),
            "--examples",
            "4",
            "--val-examples",
            "2",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--json",
        ]
        res = CliRunner().invoke(train_app, args)
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout[res.stdout.index("{") :])
    assert m["candidates_from"] == "recsmith retriever" and m["complete"]
    assert m["examples"] == 4 and m["steps"] == 2
    assert (tmp_path / "models" / "reranker-lora" / "adapter_model.safetensors").exists()


def test_label_loss_is_the_served_renormalised_answer_probability() -> None:
    # lazy: torch takes ~5 s to import; only this test needs it
    import torch

    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    label_ids, answers = [7, 3, 11, 40], [0, 2, 3]
    lab = logits[:, label_ids]
    want = -sum(float(lab[i, a] - torch.logsumexp(lab[i], dim=0)) for i, a in enumerate(answers))
    assert float(label_loss(logits, label_ids, answers)) == pytest.approx(want, abs=1e-5)
    # Mass on tokens that are not labels shown costs nothing (full-vocabulary CE would rise).
    bumped = logits.clone()
    bumped[:, 0] += 20.0
    assert float(label_loss(bumped, label_ids, answers)) == pytest.approx(want, abs=1e-5)
    full = torch.nn.functional.cross_entropy(
        bumped, torch.tensor([label_ids[a] for a in answers]), reduction="sum"
    )
    assert float(full) > want + 10


def test_training_loss_is_over_the_labels_shown_by_default(
    tiny_model: str, tmp_path: Path, examples: list[RankExample], products: dict[str, Product]
) -> None:
    # One step over every example: its loss is measured before any update, on the same
    # prompts as the validation score, so it must equal minus the mean answer log-probability
    # over the 20 labels (what the verbalizer reads), not the full-vocabulary CE.
    settings = _settings(tmp_path, tiny_model)
    cfg = _cfg(batch_size=len(examples), micro_batch=2, epochs=1)
    m = train_reranker(examples, examples, products, settings, config=cfg, fresh=True)
    assert m["steps"] == 1 and m["prompts_trained"] == len(examples)
    assert m["loss_first"] == pytest.approx(-m["val_before"]["answer_logprob"], abs=1e-4)
    vocab = train_reranker(
        examples,
        examples,
        products,
        settings,
        config=_cfg(**{**vars(cfg), "loss": "vocab"}),
        fresh=True,
    )
    assert vocab["loss_first"] > m["loss_first"] + 0.5


def test_cli_rejects_an_unknown_loss_in_one_line() -> None:
    res = CliRunner().invoke(train_app, ["reranker", "--loss", "ranknet"])
    assert res.exit_code == 2
    assert "--loss" in res.output and "'labels'" in res.output and "'vocab'" in res.output
