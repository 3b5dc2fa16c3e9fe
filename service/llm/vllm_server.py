"""Start and stop a local vLLM OpenAI-compatible server with the prepared model.

vLLM lives in its own virtual environment (`.venv-vllm`: it pins its own torch and
transformers), so the server always runs as a subprocess of that interpreter. On CPU it
needs `VLLM_TARGET_DEVICE=cpu` and a KV-cache budget; with `--enforce-eager` it is healthy
in about 65 s instead of ~5 minutes of graph compilation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from service.llm.base import LLMError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
PID_FILE = "vllm.pid"
LOG_FILE = "vllm.log"


class VLLMUnavailable(LLMError):
    """The vLLM interpreter is missing or the server did not become healthy."""


def vllm_python(explicit: str | Path | None = None) -> Path:
    """--python, else $RECSMITH_VLLM_PYTHON, else the repo's .venv-vllm."""
    return Path(explicit or os.environ.get("RECSMITH_VLLM_PYTHON") or DEFAULT_VLLM_PYTHON)


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VLLMServer:
    """One vLLM server process. Usable as a context manager:

    with VLLMServer(model_path, port=free_port()) as srv:
        srv.base_url  # "http://127.0.0.1:PORT/v1"
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        port: int = 8008,
        host: str = "127.0.0.1",
        served_name: str = "recsmith-default",
        python: str | Path | None = None,
        log_path: str | Path | None = None,
        pid_file: str | Path | None = None,
        dtype: str | None = None,
        max_model_len: int = 2048,
        enforce_eager: bool | None = None,
        kv_cache_gb: int = 2,
        startup_timeout_s: float = 240.0,
        extra_args: list[str] | None = None,
        progress: Callable[[str], None] | None = print,
    ) -> None:
        self.model_path = str(model_path)
        self.port = port
        self.host = host
        self.served_name = served_name
        self.python = vllm_python(python)
        self.log_path = Path(log_path) if log_path else None
        self.pid_file = Path(pid_file) if pid_file else None
        gpu = has_gpu()
        self.gpu = gpu
        # CPU: fp32 (bf16 on AVX2-only CPUs is emulated and slow); GPU: the model's dtype.
        self.dtype = dtype or ("auto" if gpu else "float32")
        self.max_model_len = max_model_len
        self.enforce_eager = (not gpu) if enforce_eager is None else enforce_eager
        self.kv_cache_gb = kv_cache_gb
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args or [])
        self.progress = progress or (lambda _msg: None)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh: Any = None

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def command(self) -> list[str]:
        cmd = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--host", self.host,
            "--port", str(self.port),
            "--model", self.model_path,
            "--served-model-name", self.served_name,
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            # Every verbalizer label in one top-k (see Settings.llm_top_logprobs).
            "--max-logprobs", "128",
        ]  # fmt: skip
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HF_HUB_OFFLINE"] = "1"  # never reach for a hub: the model is a local folder
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if not self.gpu:
            env["VLLM_TARGET_DEVICE"] = "cpu"
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gb)
        # Our own venv's variables must not leak into vLLM's interpreter.
        for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(var, None)
        return env

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.root_url}/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> VLLMServer:
        if not self.python.exists():
            raise VLLMUnavailable(
                f"vLLM interpreter not found at {self.python}. Install it with `make vllm` "
                "(creates .venv-vllm), or point RECSMITH_VLLM_PYTHON / --python at a Python "
                "that has vllm installed."
            )
        if self.healthy(0.5):
            raise VLLMUnavailable(f"something already serves {self.root_url}; stop it first")
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = self.log_path.open("ab")
        out = self._log_fh if self._log_fh else subprocess.DEVNULL
        self.progress(f"starting vLLM on {self.root_url} ({self.model_path})")
        # A new session = a new process group, so stop() can take vLLM's workers with it.
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(REPO_ROOT),
        )
        if self.pid_file:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(
                json.dumps(
                    {
                        "pid": self.proc.pid,
                        "port": self.port,
                        "host": self.host,
                        "model": self.model_path,
                        "served_name": self.served_name,
                        "log": str(self.log_path or ""),
                        "started_at": time.time(),
                    }
                )
            )
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        t0 = time.monotonic()
        last_report = 0.0
        while True:
            elapsed = time.monotonic() - t0
            if self.proc is not None and self.proc.poll() is not None:
                raise VLLMUnavailable(
                    f"vLLM exited with code {self.proc.returncode} during startup; "
                    f"last log lines:\n{self.log_tail()}"
                )
            if self.healthy(2.0):
                self.progress(f"vLLM healthy after {elapsed:.0f} s")
                return
            if elapsed > self.startup_timeout_s:
                raise VLLMUnavailable(
                    f"vLLM not healthy after {self.startup_timeout_s:.0f} s; "
                    f"last log lines:\n{self.log_tail()}"
                )
            if elapsed - last_report >= 15:
                last_report = elapsed
                self.progress(f"  waiting for vLLM /health … {elapsed:.0f} s")
            time.sleep(1.0)

    def log_tail(self, n: int = 25) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc is not None:
            stop_process_group(self.proc.pid, grace_s)
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=1)
            self.proc = None
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None
        if self.pid_file:
            self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process_group(pid: int, grace_s: float = 15.0) -> bool:
    """SIGTERM the process group led by pid, wait, then SIGKILL. True if anything was running."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    if pgid != pid:  # pid is not a group leader we started: signal only that process
        sender: Callable[[int], None] = lambda sig: os.kill(pid, sig)  # noqa: E731
    else:
        sender = lambda sig: os.killpg(pgid, sig)  # noqa: E731
    with contextlib.suppress(ProcessLookupError):
        sender(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        sender(signal.SIGKILL)  # also reaps stragglers in the group (engine core workers)
    return True


def read_pid_file(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stop_from_pid_file(path: Path, grace_s: float = 15.0) -> bool:
    info = read_pid_file(path)
    if not info:
        return False
    ran = stop_process_group(int(info["pid"]), grace_s)
    path.unlink(missing_ok=True)
    return ran
