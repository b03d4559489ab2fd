"""The layout's rules, read from the source: arrows point flows -> tasks -> (models, eval),
models/ and eval/ stay pure, tasks/ is grouped by stage over a ground floor, and no stage
imports another except where data really flows."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GROUND_FLOOR = ("store", "runtime")  # every stage may import these
STAGES = ("ingest", "shapes", "filter", "train", "evaluate")
# (stage, stage it imports): each is a real flow of data, said in the importer's docstring
STAGE_IMPORTS_ALLOWED = {
    ("evaluate", "shapes"),  # held-out prompts are fresh built-in scenes
}
MAX_LINES = 430  # "about 400"


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


def _sources(folder: str) -> list[Path]:
    """Every Python file under the folder, at any depth."""
    return sorted((REPO / folder).rglob("*.py"))


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


@pytest.mark.parametrize("folder", ["models", "eval"])
def test_models_and_eval_import_no_io_layer(folder):
    forbidden = {"tasks", "flows", "prefect", "mlflow", "duckdb", "img2dataset", "tqdm"}
    for path in _sources(folder):
        assert not _top(_imports(path)) & forbidden, path.name


def test_models_import_no_eval():
    for path in _sources("models"):
        assert "eval" not in _top(_imports(path)), path.name


def test_tasks_import_no_flows():
    for path in _sources("tasks"):
        assert "flows" not in _top(_imports(path)), path.relative_to(REPO)


def test_every_file_under_tasks_is_in_a_stage_or_the_ground_floor():
    loose = [
        path.name
        for path in (REPO / "tasks").glob("*.py")
        if path.name not in ("__init__.py", "settings.py")
    ]
    assert loose == []
    wings = {p.name for p in (REPO / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert wings == set(GROUND_FLOOR) | set(STAGES)
    for wing in wings:
        assert (REPO / "tasks" / wing / "__init__.py").exists(), wing


def test_no_stage_imports_another_except_where_data_flows():
    found = set()
    for stage in STAGES:
        for path in _sources(f"tasks/{stage}"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "tasks" and len(parts) > 1 and parts[1] in STAGES:
                    if parts[1] != stage:
                        found.add((stage, parts[1], path.name))
    unexpected = {f for f in found if (f[0], f[1]) not in STAGE_IMPORTS_ALLOWED}
    assert not unexpected, sorted(unexpected)
    assert {(a, b) for a, b, _ in found} == STAGE_IMPORTS_ALLOWED  # the list stays true


def test_the_ground_floor_imports_no_stage():
    for wing in GROUND_FLOOR:
        for path in _sources(f"tasks/{wing}"):
            stages = {n.split(".")[1] for n in _imports(path) if n.startswith("tasks.")}
            assert not stages & set(STAGES), path.relative_to(REPO)


@pytest.mark.parametrize("folder", ["flows", "tasks"])
def test_no_file_is_much_over_400_lines(folder):
    long = {
        str(p.relative_to(REPO)): n
        for p in _sources(folder)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long


def test_import_chains_within_tasks_are_short_and_have_no_cycle():
    """A newcomer follows any import chain inside tasks/ to its end in a few steps (a stage
    module, its helpers, the ground floor); a cycle would never end (RecursionError)."""
    modules = {_module(p): p for p in _sources("tasks")}
    deps = {
        m: {n for n in _imports(p) if n in modules and n != m and n != "tasks"}
        for m, p in modules.items()
    }

    @functools.cache
    def longest(m: str) -> tuple[str, ...]:
        return max(((m, *longest(d)) for d in deps[m]), key=len, default=(m,))

    deepest = max((longest(m) for m in modules), key=len)
    assert len(deepest) <= 6, " -> ".join(deepest)
