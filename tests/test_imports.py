"""The package's import graph: no module imports one that imports it back (at the top or inside a function),
and the modules the entry models and front ends run stay torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from test_packaging import BLOCK_HEAVY

PROJECT = Path(__file__).resolve().parents[1]
# Installed as one package (pyproject's package-dir): folder -> its module prefix.
FOLDERS = {"wan_triton": "wan_triton", "export": "wan_triton.export", "client": "wan_triton.client"}
# Run by the entry models and the front ends: no torch, diffusers, transformers or onnxruntime.
TORCH_FREE = (
    "wan_triton.tasks",
    "wan_triton.stage_io",
    "wan_triton.admission",
    "wan_triton.conditioning",
    "wan_triton.serving.entry",
    "wan_triton.serving.models",
    "wan_triton.api.app",
)


def modules() -> dict[str, Path]:
    found = {}
    for folder, prefix in FOLDERS.items():
        for path in (PROJECT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(PROJECT / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports, anywhere in it but under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
        for statement in node.body
        for child in ast.walk(statement)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
    return (found & set(known)) - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert graph["wan_triton.serving.entry"] >= {"wan_triton.tasks", "wan_triton.admission"}  # the graph is read
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # and cycles are found


def test_the_entries_and_front_ends_import_without_torch():
    code = BLOCK_HEAVY + "".join(f"import {name}\n" for name in TORCH_FREE)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
