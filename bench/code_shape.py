"""The package's shape, measured: modules and their sizes, `Any`, import cycles.

    .venv/bin/python bench/code_shape.py [--json]

What the redesign is judged by (README, "Layout"): no module over ~500 lines
except declared data tables, `Any` only at the edges, no import cycles. An
import is any `import bench_agent...` or `from bench_agent... import`, at
module level or inside a function (a lazy import that closes a cycle is still
a cycle in the design). Cycles are reported twice: those of imports that run,
and those that appear once `if TYPE_CHECKING:` imports (type-only, never run,
still a dependency a reader must follow) are counted too. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "bench_agent"
LARGE_LINES = 500
# Where `Any` belongs: what is read from outside before its parser has checked it
# (JSON, TOML, serial text), and objects of libraries without types. Elsewhere the
# agent builds what it sends (`json_value.Json`, snapshots), so `Any` there is a hole.
EDGE_MODULES = {
    "bench_agent.toml_table": "TOML as read",
    "bench_agent.config_loader": "TOML as read",
    "bench_agent.local.control": "the control socket's JSON, both sides",
    "bench_agent.local.control_server": "the control socket's JSON, both sides",
    "bench_agent.local.control_service": "the control socket's JSON, both sides",
    "bench_agent.local.control_api": "the control socket's JSON, both sides",
    "bench_agent.local.render": "the control socket's JSON, both sides",
    "bench_agent.local.techcli": "the control socket's JSON, both sides",
    "bench_agent.remote.commands": "commands as JSON from ops",
    "bench_agent.remote.processor": "commands as JSON from ops",
    "bench_agent.remote.signing": "commands as JSON from ops",
    "bench_agent.ops.send": "commands and replies as JSON",
    "bench_agent.link.contract_v2": "v2 batches' JSON as read (expand, before its checks)",
    "bench_agent.link.mqtt": "paho's untyped callback arguments",
    "bench_agent.hardware.pins": "gpiozero/lgpio objects (untyped)",
    "bench_agent.hardware.gpio": "gpiozero objects (untyped)",
    "bench_agent.hardware.ina219": "adafruit_ina219 (untyped)",
    "bench_agent.hardware.parts": "gpiozero pin factories (untyped)",
    "bench_agent.hardware.sim.bench": "gpiozero's MockFactory (untyped)",
    "bench_agent.hardware.vedirect.reader": "pyserial (untyped)",
    "bench_agent.hardware.vedirect.fields": "values parsed from serial text",
    "bench_agent.logsetup": "logging records' extra fields",
    "bench_agent.eventlog": "events read back from events.jsonl",
    "bench_agent.statefile": "JSON read from state files",
    "bench_agent.demo": "JSON read from the broker",
    "bench_agent.ops.planner.report": "the plan's JSON document, read back to render it",
    "bench_agent.ops.planner.charts": "the plan's JSON document, read back to draw it",
    "bench_agent.ops.archive_store": "rows as the database drivers return them",
    "bench_agent.ops.archive_postgres": "rows and parameters of psycopg",
    "bench_agent.ops.archive_gaps": "rows as the database drivers return them",
}
# Functions that read what came from outside (state files, the outbox's rows).
READER = re.compile(r"^_?(from_dict|from_row|parse|read|load)")


def any_uses(path: Path) -> tuple[int, int]:
    """(uses of `typing.Any` in code, of those outside the edges)."""
    tree = ast.parse(path.read_text())
    total = core = 0
    edge_module = module_name(path) in EDGE_MODULES

    def visit(node: ast.AST, in_reader: bool) -> None:
        nonlocal total, core
        if isinstance(node, ast.Import | ast.ImportFrom):
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_reader = in_reader or bool(READER.match(node.name))
        if (isinstance(node, ast.Name) and node.id == "Any") or (
            isinstance(node, ast.Attribute) and node.attr == "Any"
        ):
            total += 1
            core += not (edge_module or in_reader)
        for child in ast.iter_child_nodes(node):
            visit(child, in_reader)

    visit(tree, False)
    return total, core


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, modules: set[str], *, type_only: bool = False) -> set[str]:
    """The package's modules that `path` imports (resolving `from x import submodule`);
    with `type_only`, also those imported under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if not type_only and isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            # The longest prefix that is one of our modules.
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):
                candidate = ".".join(parts[:cut])
                if candidate in modules:
                    if candidate != me:
                        found.add(candidate)
                    break
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def measure() -> dict[str, object]:
    files = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    modules = {module_name(p): p for p in files}
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules.items()}
    anys = {name: any_uses(path) for name, path in modules.items()}
    graph = {name: imports_of(path, set(modules)) for name, path in modules.items()}
    typed = {name: imports_of(path, set(modules), type_only=True) for name, path in modules.items()}
    return {
        "modules": len(modules),
        "lines": sum(sizes.values()),
        "packages": sorted({name.rpartition(".")[0] for name in modules if "." in name}),
        "over_500_lines": {n: s for n, s in sorted(sizes.items()) if s > LARGE_LINES},
        "largest": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:10]),
        # The first measure (before the redesign): every word `Any` in the text.
        "any_text_total": sum(
            len(re.findall(r"\bAny\b", path.read_text())) for path in modules.values()
        ),
        "any_total": sum(total for total, _ in anys.values()),
        "any_by_module": {
            n: total for n, (total, _) in sorted(anys.items(), key=lambda kv: -kv[1][0]) if total
        },
        "any_outside_edges": {
            n: core for n, (_, core) in sorted(anys.items(), key=lambda kv: -kv[1][1]) if core
        },
        "import_cycles": cycles(graph),
        "import_cycles_with_type_imports": cycles(typed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    shape = measure()
    if args.json:
        print(json.dumps(shape, indent=2))
        return 0
    print(f"modules: {shape['modules']}, lines: {shape['lines']}")
    print(f"packages: {', '.join(shape['packages'])}")  # type: ignore[arg-type]
    print(f"over {LARGE_LINES} lines: {shape['over_500_lines']}")
    print(f"largest: {shape['largest']}")
    print(f"Any in code: {shape['any_total']} ({shape['any_by_module']})")
    print(f"  the word Any in the text (the first measure): {shape['any_text_total']}")
    outside = shape["any_outside_edges"]
    print(f"  outside the edges: {sum(outside.values()) or 'none'} ({outside})")  # type: ignore[attr-defined]
    print(f"import cycles: {shape['import_cycles'] or 'none'}")
    print(f"  with type-only imports: {shape['import_cycles_with_type_imports'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
