"""No import cycles among the project's own modules: each idea has one home that others import, never a circle
whose outcome depends on which module Python happened to load first. Static `import`/`from` statements only,
at module level and inside functions, as written in the source."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_dvc_deps import module_file

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("infosift", "stages", "flows")


def module_name(root: Path, path: Path) -> str:
    """``infosift/evaluate/judge.py`` -> ``infosift.evaluate.judge``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """The project modules that ``path`` imports, each import pointing at the one module it names: ``from pkg import
    sub`` at ``pkg.sub`` when that is a module, else at ``pkg``. (tests/test_dvc_deps.py over-approximates with both,
    right for deps but a false circle here: a package's ``__init__`` importing its own submodules.)"""
    me = module_name(root, path)
    found: set[str] = set()

    def add(name: str) -> None:
        if name.split(".")[0] in packages and (f := module_file(root, name)) is not None:
            found.add(module_name(root, f))

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = me.split(".")[: len(me.split(".")) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                if module_file(root, f"{module}.{alias.name}") is not None:
                    add(f"{module}.{alias.name}")
                else:
                    add(module)
    found.discard(me)
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports, over every .py file of ``packages`` under ``root``."""
    files = sorted(f for pkg in packages if (root / pkg).is_dir() for f in (root / pkg).rglob("*.py"))
    return {module_name(root, f): imports_of(root, f, packages) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when there is none (depth-first search)."""
    on_path: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return on_path[on_path.index(nxt) :] + [nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        on_path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)):
            return cycle
    return None


def test_the_project_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert len(graph) > 50 and graph["flows.pipeline"], "the graph does not see the project's modules"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    _write(
        tmp_path,
        {
            "flows/__init__.py": "",
            "flows/a.py": "from flows.b import x\n",
            "flows/b.py": "import os\n\ndef x():\n    from flows import c\n",
            "flows/c.py": "import flows.a as fa\n",
        },
    )
    assert find_cycle(import_graph(tmp_path)) == ["flows.a", "flows.b", "flows.c", "flows.a"]


def test_a_package_importing_its_own_submodules_is_no_cycle(tmp_path):
    _write(
        tmp_path,
        {
            "infosift/__init__.py": "",
            "infosift/evaluate/__init__.py": "from infosift.evaluate.judge import judge\n",
            "infosift/evaluate/judge.py": "from infosift.evaluate import rating\nfrom . import nll\n",
            "infosift/evaluate/rating.py": "import re\n",
            "infosift/evaluate/nll.py": "from .rating import x\n",
        },
    )
    graph = import_graph(tmp_path)
    assert graph["infosift.evaluate.judge"] == {"infosift.evaluate.rating", "infosift.evaluate.nll"}
    assert graph["infosift.evaluate.nll"] == {"infosift.evaluate.rating"}
    assert find_cycle(graph) is None
