"""The package's shape: no import cycles, the HTTP layer never loads llama.cpp, the engine
shows only its seam at its top, and no module outgrows what one reading takes in.

The import-linter contracts in pyproject.toml hold the layering rules; these are rules its
contracts cannot state.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module) & modules:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return groups


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("locallab_gguf", exclude_type_checking_imports=True)
    # A package's __init__ importing its own modules is not a cycle between concerns.
    modules = {m for m in graph.modules if not graph.find_children(m)}
    assert _cycles(graph, modules) == []


def test_importing_the_http_app_does_not_load_llama_cpp() -> None:
    probe = (
        "import sys, locallab_gguf.api.app, locallab_gguf.serving.model_manager; "
        "print('llama_cpp' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


PACKAGE = Path(__file__).resolve().parents[2] / "locallab_gguf"


def test_the_engine_keeps_only_its_seam_and_entry_points_at_its_top() -> None:
    # types (the seam) and client (the protocol); the rest lives in subpackages by concern.
    top = sorted(path.name for path in (PACKAGE / "engine").glob("*.py"))
    assert len(top) <= 8, top


def test_no_module_is_longer_than_500_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 500
    }
    assert long == {}
