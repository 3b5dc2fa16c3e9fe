"""What `recsmith serve --workers N` prepares before uvicorn spawns its worker processes.

Each worker is a fresh interpreter (uvicorn's supervisor spawns them) that builds its own
Application over the shared database. Prometheus needs one thing from the parent: the
multiprocess folder in the environment before any worker imports prometheus_client, so
every worker writes its values to files there and /metrics in any of them answers for all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# prometheus_client's variable; not imported from service.api.metrics: this parent process
# must not create metrics of its own in the folder it hands to the workers.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def prepare_workers(workers: int) -> Iterator[Path | None]:
    """Yields the metrics folder (None with one worker: one process, in-memory metrics).

    A folder named by PROMETHEUS_MULTIPROC_DIR is used (and emptied: files of an earlier
    run would add its counts to this one's); otherwise a private temporary folder, removed
    afterwards — two `serve` commands over one data directory must not share it."""
    if workers <= 1:
        yield None
        return
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for f in folder.glob("*.db"):
            f.unlink(missing_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="recsmith-metrics-"))
        os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        if not given:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(folder, ignore_errors=True)
