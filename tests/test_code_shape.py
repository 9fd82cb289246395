"""The package's shape, as `bench/code_shape.py` measures it: no import cycles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.support import REPO


def code_shape() -> ModuleType:
    spec = importlib.util.spec_from_file_location("code_shape", REPO / "bench" / "code_shape.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["code_shape"] = module
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_among_the_modules_that_run() -> None:
    assert code_shape().measure()["import_cycles"] == []


def test_the_cycle_finder_finds_one() -> None:
    cycles = code_shape().cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles == [["a", "b", "c"]]


def test_the_service_never_imports_the_city_s_tools_or_the_demo() -> None:
    """What a bench runs (the service and its parts) loads nothing under bench_agent.ops
    (bench-ops, its bridge: the city's side) nor the demo (the simulator is imported by
    the backend only when a config asks for it)."""
    shape = code_shape()
    modules = {
        name: path
        for path in sorted((REPO / "bench_agent").rglob("*.py"))
        if (name := shape.module_name(path))
    }
    graph = {name: shape.imports_of(path, set(modules)) for name, path in modules.items()}
    reached, todo = set(), ["bench_agent.service"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(graph[name])
    ops = {
        name for name in modules if name == "bench_agent.ops" or name.startswith("bench_agent.ops.")
    }
    assert {"bench_agent.ops", "bench_agent.ops.opsctl"} <= ops  # the check sees them
    assert sorted(reached & ops) == []
    assert "bench_agent.demo" not in reached


def test_any_only_at_the_edges_and_no_module_over_500_lines() -> None:
    """`Any` where JSON, TOML or serial text is read, or an untyped library is used
    (code_shape.EDGE_MODULES, and functions that read state files); nowhere else."""
    shape = code_shape().measure()
    assert shape["any_outside_edges"] == {}
    assert shape["over_500_lines"] == {}


def test_the_any_counter_sees_code_and_tells_edges_apart(tmp_path: Path) -> None:
    module = code_shape()
    package = tmp_path / "bench_agent"
    package.mkdir()
    source = package / "core.py"
    source.write_text(
        "from typing import Any\n"
        "def build() -> dict[str, Any]: ...\n"  # counted: outside an edge
        "def from_dict(data: Any) -> None: ...\n"  # a reader: an edge
        "# Any in a comment is not code\n"
    )
    module.REPO = tmp_path
    assert module.any_uses(source) == (2, 1)
