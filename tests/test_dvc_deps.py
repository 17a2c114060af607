"""dvc.yaml is the one description of the pipeline's shape: its deps cover every project file a stage runs and
name no project file it does not, and the Prefect flow takes its stage order from it."""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("infosift", "stages")


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import in ``path`` (also imports inside functions), incl. 'pkg.name', and the
    modules a registry in it imports by name (``registry_modules``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out | registry_modules(path)


def walks_its_package(path: Path) -> bool:
    """Whether ``path`` is a package __init__ that lists its own modules (``pkgutil.iter_modules(__path__)``)."""
    if path.name != "__init__.py":
        return False
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "iter_modules":
            if any(isinstance(a, ast.Name) and a.id == "__path__" for a in node.args):
                return True
    return False


def registry_modules(path: Path) -> set[str]:
    """The modules a registry package imports by name at run time, as dotted names.

    infosift/select/__init__.py's discover() imports every module of its package whose name does not start
    with '_' (each registers its selectors): no import statement names them, so the static walk alone would
    miss a selector's file. The same rule here; test_registry_modules_are_what_discover_imports holds them equal.
    """
    if not walks_its_package(path):
        return set()
    package = ".".join(path.parent.relative_to(package_root(path)).parts)
    names = (m.name for m in pkgutil.iter_modules([str(path.parent)]) if not m.name.startswith("_"))
    return {f"{package}.{name}" for name in names}


def package_root(path: Path) -> Path:
    """The folder that holds the top-level package of ``path`` (the first parent with no __init__.py)."""
    folder = path.parent
    while (folder / "__init__.py").is_file():
        folder = folder.parent
    return folder


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


def stage_scripts(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """stage -> (its script, its deps as written in dvc.yaml)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        module = stage["cmd"].split("python -m ")[1].split()[0]
        script = module_file(root, module)
        assert script is not None, f"{name}: cannot find the script of {stage['cmd']!r}"
        out[name] = (script, [str(d) for d in stage.get("deps", [])])
    return out


def missing_deps(root: Path) -> dict[str, list[str]]:
    """stage -> project files it runs that none of its deps covers (a dep covers itself and what is under it)."""
    missing = {}
    for name, (script, deps) in stage_scripts(root).items():

        def covered(f: str, deps: list[str] = deps) -> bool:
            return any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)

        gaps = sorted(f for f in project_files(root, script) if not covered(f))
        if gaps:
            missing[name] = gaps
    return missing


def extra_deps(root: Path) -> dict[str, list[str]]:
    """stage -> project files its deps name that it never imports: a listed file, or a Python file under a
    listed folder of the project's packages. Each would rerun the stage for a change that cannot touch it."""
    extra = {}
    for name, (script, deps) in stage_scripts(root).items():
        runs = project_files(root, script)
        listed: set[str] = set()
        for dep in deps:
            if dep.split("/")[0] not in PROJECT:
                continue  # data, models, results: not code
            path = root / dep
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            listed.update(str(f.relative_to(root)) for f in files if f.name != "__init__.py" or f.stat().st_size)
        if unused := sorted(listed - runs):
            extra[name] = unused
    return extra


def test_every_stage_lists_the_project_files_it_runs():
    assert missing_deps(ROOT) == {}


def test_no_stage_lists_a_project_file_it_never_imports():
    assert extra_deps(ROOT) == {}


def test_the_deps_check_fails_when_a_dep_is_dropped(tmp_path):
    for item in ("infosift", "stages"):
        (tmp_path / item).symlink_to(ROOT / item)
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["evaluate"]["deps"].remove("infosift/chat.py")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    assert missing_deps(tmp_path) == {"evaluate": ["infosift/chat.py"]}


def test_the_deps_check_fails_when_a_stage_lists_what_it_never_imports(tmp_path):
    for item in ("infosift", "stages"):
        (tmp_path / item).symlink_to(ROOT / item)
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["download"]["deps"] += ["infosift/sketch.py", "infosift/scale"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    scale = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "infosift/scale").glob("*.py") if f.stat().st_size)
    assert extra_deps(tmp_path) == {"download": sorted(["infosift/sketch.py", *scale])}


def test_a_selector_module_is_a_dep_although_only_the_registry_imports_it(tmp_path):
    """A new selector file is imported by discover() alone (no import names it): its stages must still list it."""
    (tmp_path / "infosift").mkdir()
    for f in (ROOT / "infosift").iterdir():
        if f.name not in ("select", "__pycache__"):
            (tmp_path / "infosift" / f.name).symlink_to(f)
    (tmp_path / "infosift" / "select").mkdir()
    for f in (ROOT / "infosift" / "select").glob("*.py"):
        (tmp_path / "infosift" / "select" / f.name).symlink_to(f)
    (tmp_path / "infosift" / "select" / "newcomer.py").write_text("import infosift.sketch\n")
    (tmp_path / "stages").symlink_to(ROOT / "stages")
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["select"]["deps"] = [d for d in spec["stages"]["select"]["deps"] if d != "infosift/select"]
    spec["stages"]["select"]["deps"] += [f"infosift/select/{f.name}" for f in (ROOT / "infosift/select").glob("*.py")]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    assert "infosift/sketch.py" not in spec["stages"]["select"]["deps"]
    assert missing_deps(tmp_path)["select"] == ["infosift/select/newcomer.py", "infosift/sketch.py"]


def test_registry_modules_are_what_discover_imports():
    """The deps walk's reading of the selector registry is the registry's own list of modules."""
    import infosift.select

    found = registry_modules(ROOT / "infosift" / "select" / "__init__.py")
    assert found == {f"infosift.select.{name}" for name in infosift.select.discover()}
    assert "infosift.select.fishersft" in found and not any(m.split(".")[-1].startswith("_") for m in found)
    assert registry_modules(ROOT / "infosift" / "evaluate" / "__init__.py") == set()  # imports by name only


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


def test_each_mt_bench_reader_depends_on_its_own_copy():
    """fetch_mt_bench has one item per reader, and each reader depends on its copy alone: `dvc repro compare`
    reaches evaluate's fetch only, and evaluate with the suite off never reruns for sketch's MT-Bench."""
    from stages.fetch import READERS

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["fetch_mt_bench"]["matrix"]["reader"] == list(READERS)
    reads = {"evaluate_base": "evaluate", "evaluate": "evaluate", "sketch": "sketch"}
    for name, spec in stages.items():
        copies = [d for d in map(str, spec.get("deps", [])) if d.startswith("data/mt_bench")]
        assert copies == ([f"data/mt_bench/{reads[name]}"] if name in reads else []), name
