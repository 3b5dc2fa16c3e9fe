"""Fixtures for the HTTP tests (defined in tests/api/support.py, shared with tests/web)."""

from tests.api.support import (  # noqa: F401 - pytest finds fixtures by name
    anon,
    app,
    client,
    demo_dir,
    live_server,
    llm_down_client,
    llm_path,
    settings,
)
