"""flows/plan.py: an evidence run exported as DVC resolves it, then run without DVC (ordered, resumable, parallel)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from flows import evidence, plan

ROOT = Path(__file__).resolve().parent.parent


def test_export_resolves_the_profiles_stages_as_dvc_does_without_touching_params_yaml(tmp_path):
    before = (ROOT / "params.yaml").read_bytes()
    out = tmp_path / "plan.json"
    assert plan.main(["export", "--pool", "contaminated", "--profile", "gpu", "--set", "select.seeds=[0, 1]",
                      "--out", str(out)]) == 0  # fmt: skip
    assert (ROOT / "params.yaml").read_bytes() == before
    got = json.loads(out.read_text())
    flat = {**evidence.overrides(yaml.safe_load(evidence.PROFILE.read_text()), "contaminated", "gpu"),
            "select.seeds": [0, 1]}  # fmt: skip
    assert got["overrides"] == flat and got["params"]["select"]["seeds"] == [0, 1]
    sweep, compare = got["phases"]
    assert sweep["target"] == "sweep" and [s["name"] for s in sweep["stages"]][-1] == "sweep"
    assert compare["freeze"] == {"key": evidence.LR_KEY, "file": "results/sweep/sweep.json",
                                 "field": "chosen_learning_rate"}  # fmt: skip
    names = [s["name"] for s in compare["stages"]]
    budgets, runs = flat["select.budgets"], flat["select.run"]
    finetunes = {f"finetune@{v}-{b}-{s}-nll" for v in runs for b in budgets for s in (0, 1)}
    assert finetunes <= set(names) and names[-1] == "compare"
    assert len([n for n in names if n.startswith("finetune@")]) == len(finetunes)
    for i, stage in enumerate(compare["stages"]):  # every stage after what it reads
        assert set(stage["after"]) <= set(names[:i]), stage["name"]
    one = next(s for s in compare["stages"] if s["name"] == f"finetune@{runs[0]}-{budgets[0]}-0-nll")
    assert one["cmd"] == f"python -m stages.finetune {runs[0]} {budgets[0]} 0 nll"
    assert f"select@{runs[0]}-{budgets[0]}" in one["after"]


def test_export_refuses_unknown_names_and_a_set_without_a_value(tmp_path):
    out = str(tmp_path / "p.json")
    with pytest.raises(SystemExit, match="unknown pool 'dirty'"):
        plan.main(["export", "--pool", "dirty", "--out", out])
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        plan.main(["export", "--pool", "clean", "--set", "select.seeds", "--out", out])
    with pytest.raises(SystemExit, match="no such plan file"):
        plan.main(["run", str(tmp_path / "none.json")])


def script(path: str, text: str) -> str:
    """A stage command that appends ``text`` to ``path`` (the order the stages ran in) and writes its output."""
    code = f"import pathlib; p = pathlib.Path({path!r}); p.open('a').write({text!r} + chr(10)); print('ran', {text!r})"
    return f"python -c {json.dumps(code)}"


def toy_plan(tmp: Path, fail: str | None = None) -> Path:
    """A two-phase plan: `a` writes the sweep's choice; `b` and `c` both read `a`; `d` reads both."""
    choice = (
        "import json, pathlib; pathlib.Path('results/sweep').mkdir(parents=True, exist_ok=True); "
        "pathlib.Path('results/sweep/sweep.json').write_text(json.dumps({'chosen_learning_rate': 3e-4}))"
    )
    stages = [
        {"name": "a", "cmd": f"python -c {json.dumps(choice)}", "after": []},
        {"name": "b", "cmd": script("log.txt", "b"), "after": ["a"]},
        {
            "name": "c",
            "cmd": "python -c 'import sys; sys.exit(65)'" if fail == "c" else script("log.txt", "c"),
            "after": ["a"],
        },
        {"name": "d", "cmd": script("log.txt", "d"), "after": ["b", "c"]},
    ]
    body = {"pool": "toy", "profile": None, "overrides": {}, "params": {"finetune": {"train": {"learning_rate": 1e-5}}},
            "phases": [{"target": "sweep", "stages": stages[:1]},
                       {"target": "compare", "stages": stages,
                        "freeze": {"key": "finetune.train.learning_rate", "file": "results/sweep/sweep.json",
                                   "field": "chosen_learning_rate"}}]}  # fmt: skip
    path = tmp / "plan.json"
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_plan_runs_its_stages_after_what_they_read_freezes_the_rate_and_collects(tmp_path, jobs):
    path = toy_plan(tmp_path)
    plan.run(path, tmp_path / "evidence", root=tmp_path, jobs=jobs)
    order = (tmp_path / "log.txt").read_text().split()
    assert sorted(order[:2]) == ["b", "c"] and order[2] == "d"  # `a` once, though both phases hold it
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["finetune"]["train"]["learning_rate"] == 3e-4
    run = json.loads((tmp_path / "evidence" / "run.json").read_text())
    assert run["pool"] == "toy" and run["command"] == ["python", "-m", "flows.plan", "run", "plan.json"]
    assert (tmp_path / "evidence" / "sweep.json").exists()  # the sweep's files travel with the evidence
    plan.run(path, tmp_path / "evidence", root=tmp_path, jobs=jobs)  # all marked done: nothing runs again
    assert (tmp_path / "log.txt").read_text().split() == order


def test_a_failed_stage_stops_the_plan_with_one_line_and_a_rerun_resumes_there(tmp_path):
    path = toy_plan(tmp_path, fail="c")
    for _ in range(2):  # the rerun starts at c: a and b are not run again
        with pytest.raises(SystemExit, match=r"plan stage c failed: the stage's own error .*rerun the plan to resume"):
            plan.run(path, tmp_path / "evidence", root=tmp_path)
        assert (tmp_path / "log.txt").read_text().split() == ["b"]  # d never started
        assert {p.name for p in (tmp_path / ".cache" / "plan").rglob("*") if p.is_file()} == {"a", "b"}
    assert not (tmp_path / "evidence").exists()  # nothing collected from a run that did not finish


def test_a_stage_command_runs_on_this_interpreter():
    assert plan.command("python -m stages.select random 8") == [sys.executable, "-m", "stages.select", "random", "8"]
    assert plan.command("python3 -c 'print(1)'") == [sys.executable, "-c", "print(1)"]
    assert plan.command("dvc version") == ["dvc", "version"]


@pytest.mark.slow
def test_a_tiny_evidence_plan_runs_the_real_stages_without_dvc_and_writes_the_evidence(tmp_path, monkeypatch):
    """Exported with DVC from the real dvc.yaml, then run with no `dvc` on PATH: the evidence of two selectors,
    the sweep's rate frozen for both."""
    import shutil

    from tests.test_e2e import write_mirror
    from tests.test_kill9 import params as tiny_params
    from tests.tiny import save_tiny_model

    mirror = write_mirror(tmp_path / "mirror", n_train=60, n_test=8)
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
    base = tiny_params(mirror, save_tiny_model(tmp_path / "model"))
    base["download"]["validation_size"] = 6
    base["evaluate"]["mt_bench"]["dir"] = str(mirror / "mt_bench")
    base["select"]["variants"]["length"] = {"selector": "length"}
    base["sweep"] = {"learning_rates": [1e-4, 1e-2], "budget": 4, "seeds": [0]}
    (ws / "params.yaml").write_text(yaml.safe_dump(base))
    profile = {"overrides": {"select.run": ["random", "length"], "select.budget_unit": "examples",
                             "select.budgets": [4, 6], "finetune.train.max_steps": 6},
               "pools": {"tiny": {}}}  # fmt: skip
    (ws / "params.evidence.yaml").write_text(yaml.safe_dump(profile))
    got = plan.export("tiny", None, {}, root=ws)
    path = ws / "plan.json"
    path.write_text(json.dumps(got))
    bin_dir = tmp_path / "bin"  # PATH with this interpreter and no dvc
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    plan.run(path, ws / "evidence", root=ws, jobs=2)
    import pandas as pd

    table = pd.read_csv(ws / "evidence" / "evidence.csv")
    assert set(table["selector"]) == {"random", "length"} and set(table["budget"]) == {4, 6}
    rate = json.loads((ws / "evidence" / "sweep.json").read_text())["chosen_learning_rate"]
    assert rate in (1e-4, 1e-2)
    trained = json.loads((ws / "models" / "length-4-s0-nll" / "infosift.json").read_text())["trained"]
    assert trained["learning_rate"] == rate and trained["steps"] == 6
