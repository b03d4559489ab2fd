"""The layout's rules, read from the source: arrows point flows -> tasks -> (models, eval),
models/ and eval/ stay pure, and tasks/ stays shallow."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (dotted names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("folder", ["models", "eval"])
def test_models_and_eval_import_no_io_layer(folder):
    forbidden = {"tasks", "flows", "prefect", "mlflow", "duckdb", "img2dataset", "tqdm"}
    for path in sorted((REPO / folder).glob("*.py")):
        assert not _top(_imports(path)) & forbidden, path.name


def test_models_import_no_eval():
    for path in sorted((REPO / "models").glob("*.py")):
        assert "eval" not in _top(_imports(path)), path.name


def test_tasks_import_no_flows():
    for path in sorted((REPO / "tasks").glob("*.py")):
        assert "flows" not in _top(_imports(path)), path.name


def test_no_chain_of_imports_within_tasks_is_deeper_than_three_modules():
    modules = {p.stem for p in (REPO / "tasks").glob("*.py")} - {"__init__"}
    deps = {
        m: {n.split(".")[1] for n in _imports(REPO / "tasks" / f"{m}.py") if n.startswith("tasks.")}
        & modules
        for m in modules
    }

    @functools.cache
    def longest(m: str) -> tuple[str, ...]:
        return max(((m, *longest(d)) for d in deps[m]), key=len, default=(m,))

    chains = {m: longest(m) for m in modules}
    deepest = max(chains.values(), key=len)
    assert len(deepest) <= 3, " -> ".join(deepest)
