"""A copy worker process for the queue tests: `recsmith worker`'s own loop
(service.worker.run_until_signalled, the Application's writer) with the tests' FakeLLM in
place of a model, so that many processes can run side by side on 2 cores.

Settings come from RECSMITH_* variables (the database URL, lease, poll); the fake waits
RECSMITH_TEST_WORKER_DELAY_S per generate call (a batch) and writes each product's own
name (a text that passes the checks), appending the name to RECSMITH_TEST_WORKER_LOG
before answering, so a test sees which process wrote which product.

    python -m tests.copy.queue_worker
"""

from __future__ import annotations

import os

from service.application import Application
from service.config import Settings
from service.worker import run_until_signalled
from tests.fakes import FakeLLM, writes_names


def main() -> None:
    settings = Settings()
    log = os.environ["RECSMITH_TEST_WORKER_LOG"]
    name_of = writes_names()

    def write(prompt: str) -> str:
        name = name_of(prompt)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(name + "\n")
        return name

    llm = FakeLLM(settings, write, delay_s=float(os.environ["RECSMITH_TEST_WORKER_DELAY_S"]))
    application = Application(settings, writer_llm=llm)

    def started(worker) -> None:  # noqa: ANN001 - a Worker
        print(f"started {worker.worker_id}", flush=True)

    w = run_until_signalled(settings, application.new_writer, grace_s=5.0, on_start=started)
    print(f"stopped {w.batches} {w.done} {w.failed}", flush=True)


if __name__ == "__main__":
    main()
