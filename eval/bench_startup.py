"""`recsmith --help` start-up time: a git revision against the working tree, side by side.

Each run is a fresh interpreter that imports the CLI and prints its help (what every
`recsmith` command pays before it does anything); the two trees alternate run by run so that
load on the machine falls on both alike. Also prints what each named module adds when it is
imported after the CLI (the cost a `# lazy:` import avoids), in the working tree.

    python -m eval.bench_startup --base HEAD~3 --runs 15 --after uvicorn service.llm.openai_backend
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELP = "import sys; sys.argv = ['recsmith', '--help']; from service.cli import app; app()"
AFTER = (
    "import time\nfrom service.cli import app\n"
    "t = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - t)"
)


def export(rev: str, into: Path) -> Path:
    """The tracked files of `rev` (git archive), unpacked into `into`."""
    data = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(data.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def seconds(tree: Path, code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD", help="the revision to compare with")
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--after", nargs="*", default=[], help="modules to time after the CLI")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        trees = {args.base: export(args.base, Path(tmp)), "working tree": REPO}
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                times[name].append(seconds(tree, HELP))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"recsmith --help  {name:>14}: median {medians[name]:.3f} s  (min {min(ts):.3f})")
    print(f"working tree / {args.base}: {medians['working tree'] / medians[args.base]:.3f}")
    for module in args.after:
        code = AFTER.format(module=module)
        added = [
            float(subprocess.check_output([sys.executable, "-c", code], cwd=REPO, text=True))
            for _ in range(5)
        ]
        print(f"+{statistics.median(added):.3f} s  import {module} after the CLI (median of 5)")
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
