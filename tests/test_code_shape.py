"""The package's shape, as `bench/code_shape.py` measures it: no import cycles."""

from __future__ import annotations

import importlib.util
import sys
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


def test_the_service_never_imports_the_ops_tool_or_the_demo() -> None:
    """What a bench runs (the service and its parts) does not load bench-ops or the demo
    (the simulator is imported by the backend only when a config asks for it)."""
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
    assert "bench_agent.remote.opsctl" not in reached
    assert "bench_agent.demo" not in reached
