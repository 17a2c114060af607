"""dvc.yaml is the one description of the pipeline's shape: its deps cover every project file a stage runs,
and the Prefect flow takes its stage order from it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("infosift", "stages")


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import in ``path`` (also imports inside functions), incl. 'pkg.name'."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def module_file(root: Path, module: str) -> Path | None:
    """The project file of a module name, or None (third-party, or a name imported from a module)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def project_files(root: Path, script: Path) -> set[str]:
    """The stage script and every project file it imports, transitively, as repo-relative paths."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for module in imported_modules(f):
            if module.split(".")[0] in PROJECT and (g := module_file(root, module)) is not None:
                todo.append(g)
                # importing a subpackage runs every parent package's __init__ too
                for parent in g.relative_to(root).parents:
                    if str(parent) != "." and (root / parent / "__init__.py").is_file():
                        todo.append(root / parent / "__init__.py")
    return {str(f.relative_to(root)) for f in seen if not f.name == "__init__.py" or f.stat().st_size}


def missing_deps(root: Path) -> dict[str, list[str]]:
    """stage -> project files it runs that none of its deps covers (a dep covers itself and what is under it)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        module = stage["cmd"].split("python -m ")[1].split()[0]
        script = module_file(root, module)
        assert script is not None, f"{name}: cannot find the script of {stage['cmd']!r}"
        deps = [str(d) for d in stage.get("deps", [])]

        def covered(f: str, deps: list[str] = deps) -> bool:
            return any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)

        gaps = sorted(f for f in project_files(root, script) if not covered(f))
        if gaps:
            missing[name] = gaps
    return missing


def test_every_stage_lists_the_project_files_it_runs():
    assert missing_deps(ROOT) == {}


def test_the_deps_check_fails_when_a_dep_is_dropped(tmp_path):
    for item in ("infosift", "stages"):
        (tmp_path / item).symlink_to(ROOT / item)
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["evaluate"]["deps"].remove("infosift/chat.py")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    assert missing_deps(tmp_path) == {"evaluate": ["infosift/chat.py"]}


def test_flow_takes_stage_order_from_dvc_yaml(tmp_path):
    from flows.pipeline import STAGES, dvc_stages

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert STAGES == list(stages)
    spec = {"stages": {"b": {"cmd": "x"}, "a": {"cmd": "y"}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert dvc_stages(tmp_path / "dvc.yaml") == ["b", "a"]


@pytest.mark.parametrize("index", range(len(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])))
def test_stage_order_puts_producers_first(index):
    """A stage never comes before a stage whose outputs it reads (so running them in order is valid)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    names = list(stages)
    if index >= len(names):
        pytest.skip("fewer stages")
    name = names[index]

    def outs(stage: dict) -> list[str]:
        return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]

    def root_of(path: str) -> str:
        return path.split("${")[0].rstrip("/")

    for dep in stages[name].get("deps", []):
        for later in names[index + 1 :]:
            for out in outs(stages[later]):
                assert not root_of(str(dep)).startswith(root_of(out)) or not root_of(out), (name, dep, later, out)


FETCHING = ("fetch", "fetch_mt_bench")  # the stages that bring data from outside the repository under data/


def outside_deps(root: Path) -> dict[str, list[str]]:
    """stage -> its deps that name a path outside the repository: absolute, above it (..), or made of a param
    (a mirror folder) rather than the stage's own matrix item. The fetching stages are the door and exempt."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        outside = [
            d
            for d in map(str, stage.get("deps", []))
            if d.startswith(("/", "~")) or ".." in Path(d).parts or re.search(r"\$\{(?!item\.)", d)
        ]
        if outside and name not in FETCHING:
            found[name] = outside
    return found


def test_only_the_fetching_stages_read_from_outside_the_repository():
    assert outside_deps(ROOT) == {}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    # they find their sources by params, so DVC cannot hash them: they look on every repro instead
    assert all(stages[name].get("always_changed") is True for name in FETCHING)


def test_the_outside_check_fails_on_a_mirror_dep(tmp_path):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["evaluate"]["deps"].append("${download.mirror_dir}/mt_bench")
    spec["stages"]["sketch"]["deps"].append("../shared/data/mt_bench")
    spec["stages"]["fetch"]["deps"].append("/data/own.jsonl")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    assert outside_deps(tmp_path) == {
        "evaluate": ["${download.mirror_dir}/mt_bench"],
        "sketch": ["../shared/data/mt_bench"],
    }
