"""Dependencies point one way, read from the source's import statements (every import,
in a function or not; `if TYPE_CHECKING:` blocks included, as they name what a module
depends on):

- serving (everything under service/ but the training, the offline data and the CLI that
  mounts them) never imports service/training, service/offline or eval/;
- training and the offline data never import eval/; the offline data never imports
  training (it lies below both);
- no route module imports another;
- no import cycle among the modules imported at load time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_SERVING = ("service/training/", "service/offline/", "service/cli.py", "service/migrations/")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, *, load_time_only: bool = False) -> set[str]:
    """Absolute module names `path` imports (`from a import b` counts a and a.b)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    if load_time_only:  # leave out function bodies and `if TYPE_CHECKING:` blocks
        for node in ast.walk(tree):
            lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or (
                isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            )
            if lazy:
                skip.update(id(n) for n in ast.walk(node) if n is not node)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def relpath(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def breaking(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{relpath(p)} imports {name}"
        for p in paths
        for name in sorted(imported(p))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


SERVING = [p for p in sources("service") if not relpath(p).startswith(NOT_SERVING)]


def test_the_serving_set_is_what_the_rule_is_about() -> None:
    names = {relpath(p) for p in SERVING}
    for must in ("service/application.py", "service/api/app.py", "service/llm/base.py",
                 "service/retrieval/retriever.py", "service/ranking/verbalizer.py",
                 "service/copy/writer.py", "service/assistant/chat.py",
                 "service/catalog/store.py"):  # fmt: skip
        assert must in names
    assert not names & {"service/training/lora.py", "service/offline/split.py"}


def test_serving_never_imports_training_offline_data_or_eval() -> None:
    assert breaking(SERVING, ("service.training", "service.offline", "eval")) == []


def test_training_and_offline_data_never_import_eval() -> None:
    assert breaking(sources("service/training", "service/offline"), ("eval",)) == []
    assert breaking(sources("service/offline"), ("service.training",)) == []


def test_no_route_module_imports_another() -> None:
    routes = sources("service/api/routes")
    names = {module_name(p) for p in routes if p.name != "__init__.py"}
    assert [f"{relpath(p)} imports {n}" for p in routes for n in imported(p) & names] == []


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("folders", [("service", "eval")])
def test_no_import_cycle_at_load_time(folders: tuple[str, ...]) -> None:
    paths = {module_name(p): p for p in sources(*folders)}
    graph = {m: imported(p, load_time_only=True) & paths.keys() - {m} for m, p in paths.items()}
    assert find_cycle(graph) == []
