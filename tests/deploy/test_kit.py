"""The deployment kit (deploy/), checked as far as a machine without Docker allows: the files
parse, every command our image runs is a real `recsmith` command (run here, outside a
container, with --help), every RECSMITH_* variable the compose file sets is a setting that
validates, the vLLM replicas agree on the names the API asks for, Prometheus scrapes the
API's real /metrics, and the Dockerfile copies paths that exist and runs what it means to."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.api.routes.health import router
from service.config import Settings
from service.llm.pool import parse_base_urls
from service.llm.prepare import MODELS
from service.ranking.adapter import ADAPTER_DIR, SERVED_NAME

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RECSMITH = Path(sys.executable).with_name("recsmith")  # the venv's console script


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run our image."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("image", "").startswith("recsmith") or "build" in svc
    }


def _argv(svc: dict[str, Any]) -> list[str]:
    def words(v: Any) -> list[str]:
        return shlex.split(v) if isinstance(v, str) else [str(x) for x in v or []]

    return words(svc.get("entrypoint")) + words(svc.get("command"))


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults (no .env file here)."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", str(value))


def _run_help(argv: list[str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "recsmith", argv
    env = {**os.environ, "RECSMITH_DATA_DIR": os.environ.get("RECSMITH_DATA_DIR", "/tmp")}
    return subprocess.run(
        [str(RECSMITH), *argv[1:], "--help"], capture_output=True, text=True, env=env, timeout=120
    )


def test_compose_has_every_part() -> None:
    services = _compose()["services"]
    for name in ("api", "worker", "postgres", "prometheus", "migrate"):
        assert name in services, name
    vllm = [n for n, s in services.items() if "vllm/vllm-openai" in str(s.get("image"))]
    assert len(vllm) >= 2, "at least two vLLM replicas"
    assert services["postgres"]["image"] == "pgvector/pgvector:pg16"
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["api"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / services["api"]["build"]["context"]).resolve() == REPO.resolve()


def test_each_command_of_our_image_is_a_real_cli_command() -> None:
    ours = _ours(_compose())
    assert {"api", "worker", "migrate"} <= set(ours)
    assert _argv(ours["api"]) == ["recsmith", "serve"]
    assert _argv(ours["worker"]) == ["recsmith", "worker"]  # the queue worker, not one job
    seen: set[tuple[str, ...]] = set()
    for name, svc in ours.items():
        argv = _argv(svc)
        if tuple(argv) in seen:
            continue
        seen.add(tuple(argv))
        # With --help click still parses every option first: a wrong flag fails here too.
        r = _run_help(argv)
        assert r.returncode == 0, f"{name}: {' '.join(argv)} --help\n{r.stdout}{r.stderr}"
        assert "Usage: recsmith" in r.stdout, name


def test_every_recsmith_variable_is_a_setting_and_validates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fields = set(Settings.model_fields)
    ours = _ours(_compose())
    for name, svc in ours.items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        ours_env = {k: _interpolate(v) for k, v in env.items() if k.startswith("RECSMITH_")}
        assert ours_env, name
        for key in ours_env:
            assert key.removeprefix("RECSMITH_").lower() in fields, f"{name}: {key}"
        for key in [k for k in os.environ if k.startswith("RECSMITH_")]:
            monkeypatch.delenv(key)
        for key, value in ours_env.items():
            monkeypatch.setenv(key, value)
        s = Settings(_env_file=None)  # type: ignore[call-arg]
        assert s.llm_backend == "openai" and s.database_url.startswith("postgresql+psycopg://")
        assert str(s.data_dir) == "/data" and str(s.models_dir) == "/models"


def test_vllm_replicas_serve_what_the_api_asks_for() -> None:
    compose = _compose()
    services = compose["services"]
    api_env = services["api"]["environment"]
    urls = parse_base_urls(api_env["RECSMITH_LLM_BASE_URL"])
    vllm = {n: s for n, s in services.items() if "vllm/vllm-openai" in str(s.get("image"))}
    # The API's list names every replica, each at the port it listens on.
    assert sorted(urls) == sorted(f"http://{n}:8000/v1" for n in vllm)
    for name, svc in vllm.items():
        args = [str(a) for a in svc["command"]]

        def arg(flag: str, args: list[str] = args) -> str:
            return args[args.index(flag) + 1]

        assert arg("--port") == "8000" and arg("--host") == "0.0.0.0"
        # Same base-model name and same adapter name on every replica.
        assert arg("--served-model-name") == api_env["RECSMITH_LLM_SERVED_NAME"], name
        assert "--enable-lora" in args, name
        assert arg("--lora-modules") == f"{SERVED_NAME}=/models/{ADAPTER_DIR}", name
        assert arg("--max-logprobs") == "128"  # every verbalizer label in one top-k
        # The model is the folder `make models` prepares, mounted from var/models.
        assert arg("--model") == f"/models/{MODELS['smollm2'].folder}"
        assert "../var/models:/models:ro" in svc["volumes"]
        assert svc["entrypoint"][-1] == "vllm.entrypoints.openai.api_server"
    assert (REPO / "var" / "models" / MODELS["smollm2"].folder / "config.json").exists() or (
        not (REPO / "var" / "models").exists()
    )
    # The API sees the adapter vLLM serves (DATA_DIR/models/reranker-lora).
    assert (
        f"../var/models/{ADAPTER_DIR}:/data/models/{ADAPTER_DIR}:ro" in (services["api"]["volumes"])
    )


def test_prometheus_scrapes_the_apis_metrics() -> None:
    routes = {r.path for r in router.routes}  # type: ignore[attr-defined]
    conf = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    api = jobs["recsmith-api"]
    assert api["metrics_path"] in routes and api["metrics_path"] == "/metrics"
    sd = api["dns_sd_configs"][0]
    compose = _compose()
    assert sd["names"] == ["api"] and sd["port"] == int(
        compose["services"]["api"]["environment"]["RECSMITH_PORT"]
    )
    prom = compose["services"]["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    for target in jobs["vllm"]["static_configs"][0]["targets"]:
        assert target.split(":")[0] in compose["services"], target
    pg = compose["services"]["postgres"]["volumes"]
    assert any(v.startswith("./postgres-init.sql:") for v in pg)
    assert "CREATE EXTENSION IF NOT EXISTS vector" in (DEPLOY / "postgres-init.sql").read_text()


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_real_paths_and_runs_real_commands() -> None:
    steps = _dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [a for i, a in steps if i == "RUN"]
    # torch pinned and CPU-only, before the project (which would pull the default build).
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    project = next(i for i, r in enumerate(runs) if "pip install -e" in r)
    assert torch < project and "/whl/cpu" in " ".join(a for i, a in steps if i == "ARG")
    extras = re.search(r"\.\[(\w+)\]", runs[project])
    assert extras is not None
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras.group(1) in optional  # postgres: psycopg for the compose database
    for _, args in (s for s in steps if s[0] == "COPY"):
        *sources, _dest = args.split()
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
    # prompts/ is read from beside service/ (service/prompts.py): both must be copied.
    copied = {a.split()[0] for i, a in steps if i == "COPY"}
    assert {"service", "prompts", "pyproject.toml"} <= copied
    user = [a for i, a in steps if i == "USER"]
    assert user and user[-1] not in ("root", "0")
    cmd = json.loads(next(a for i, a in steps if i == "CMD"))
    assert cmd == ["recsmith", "serve"]
    assert _run_help(cmd).returncode == 0
    health = next(a for i, a in steps if i == "HEALTHCHECK")
    assert "/healthz" in health

    assert "/healthz" in {r.path for r in router.routes}  # type: ignore[attr-defined]
    # The healthcheck's Python line is valid Python.
    probe = json.loads(health[health.index("CMD") + 3 :].strip())
    compile(probe[-1], "healthcheck", "exec")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".venv-vllm", "var", ".git"} <= set(ignore)
