"""One safe pattern for every variant, loss, dataset, pool and profile name, checked where a stage or flow starts:
a name that could climb out of the workspace or reach a shell is one error line, and nothing is deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infosift.errors import UnsafeNameError
from infosift.names import check_name, check_params_names, is_safe_name
from tests.test_stage_errors import ROOT, assert_one_error_line, run_stage

UNSAFE = ["../victim", "..", "a/b", "a\\b", "x;touch pwned", "$(id)", "${item.x}", "-rf", ".hidden", "a b", "",
          "a..b", "name\n", "x" * 101, "ü"]  # fmt: skip


@pytest.mark.parametrize("name", UNSAFE + [None, 3, ["a"]])
def test_unsafe_names_are_refused_with_where_they_came_from(name):
    assert not is_safe_name(name)
    with pytest.raises(UnsafeNameError, match=r"^params.yaml select.run: .* is not a safe name \(letters") as err:
        check_name(name, "params.yaml select.run")
    assert "\n" not in str(err.value)


def test_every_name_the_project_ships_is_safe():
    """The pattern admits what params.yaml and the evidence profiles use today (variants like gip-target,
    sentence_od, fishersft-len; losses; the dataset; pools and profiles)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    check_params_names(p)
    evidence = yaml.safe_load((ROOT / "params.evidence.yaml").read_text())
    names = [*(evidence.get("pools") or {}), *(evidence.get("profiles") or {})]
    assert names and all(is_safe_name(n) for n in names)
    assert is_safe_name("x" * 100) and is_safe_name("fishersft-22000-s0-nll") and is_safe_name("v1.2")


@pytest.mark.parametrize(
    ("where", "params"),
    [
        ("params.yaml download.dataset's name", {"download": {"dataset": "../data/my set;rm.jsonl"}}),
        ("params.yaml select.run", {"select": {"run": ["random", "x; rm -rf ~"]}}),
        ("params.yaml select.variants", {"select": {"variants": {"../up": {"selector": "random"}}}}),
        ("params.yaml finetune.losses", {"finetune": {"losses": ["nll", "$(id)"]}}),
    ],
)
def test_params_names_are_checked_where_each_lives(where, params):
    with pytest.raises(UnsafeNameError, match=f"^{where}: "):
        check_params_names(params)


def victim(tmp_path: Path) -> Path:
    """A directory outside the workspace that a '../' name would have atomic_output replace."""
    v = tmp_path / "victim"
    v.mkdir()
    (v / "keep.txt").write_text("still here\n")
    return v


def workspace(tmp_path: Path, **sections) -> Path:
    ws = tmp_path / "a" / "ws"  # deep enough that ../../../victim climbs out of it
    ws.mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(sections))
    return ws


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("stages.select", "../../../../victim", "5"), "select VARIANT: '../../../../victim' is not a safe name"),
        (("stages.finetune", "../../../victim", "5", "0", "nll"), "finetune VARIANT: '../../../victim' is not a"),
        (("stages.evaluate", "../../../../victim"), "evaluate NAME: '../../../../victim' is not a safe name"),
    ],
)
def test_a_dotdot_name_on_the_command_line_is_one_error_and_deletes_nothing(tmp_path, args, message):
    v = victim(tmp_path)
    name = args[1]
    ws = workspace(
        tmp_path,
        select={"run": [name], "budgets": [5], "variants": {name: {"selector": "random"}}},
        finetune={"losses": ["nll"], "train": {}},
        evaluate={"n_test": 1},
    )
    assert_one_error_line(run_stage(ws, *args), message)
    assert (v / "keep.txt").read_text() == "still here\n" and sorted(p.name for p in ws.iterdir()) == ["params.yaml"]


def test_compare_refuses_a_dotdot_variant_in_params_before_writing(tmp_path):
    v = victim(tmp_path)
    ws = workspace(
        tmp_path,
        select={"run": ["../../../victim"], "budgets": [5], "variants": {"../../../victim": {"selector": "random"}}},
        finetune={"losses": ["nll"]},
        download={"dataset": "gsm8k"},
        compare={"mlflow": False},
    )
    assert_one_error_line(run_stage(ws, "stages.compare"), "params.yaml select.run: '../../../victim' is not a safe")
    assert (v / "keep.txt").exists() and sorted(p.name for p in ws.iterdir()) == ["params.yaml"]


def test_a_dataset_path_outside_the_workspace_is_read_never_written(tmp_path):
    """download.dataset may be a path (a file or folder is a dataset): '../../../victim' is looked for there, and
    its absence is one line; nothing outside the workspace is touched, nothing inside is written."""
    v = victim(tmp_path)
    ws = workspace(tmp_path, download={"dataset": "../../../victim", "mirror_dir": str(tmp_path), "seed": 0})
    assert_one_error_line(run_stage(ws, "stages.download"), "download.dataset='../../../victim'")
    assert (v / "keep.txt").exists() and sorted(p.name for p in ws.iterdir()) == ["params.yaml"]


def test_evidence_flow_refuses_a_dotdot_pool_or_profile():
    from flows.evidence import overrides

    profile = {"pools": {"../x": {}, "clean": {}}, "profiles": {"../../p": {}}}
    with pytest.raises(SystemExit, match=r"^error: params.evidence.yaml pool: '../x' is not a safe name"):
        overrides(profile, "../x")
    with pytest.raises(SystemExit, match=r"^error: params.evidence.yaml profile: '../../p' is not a safe name"):
        overrides(profile, "clean", "../../p")


def test_pipeline_flow_checks_names_before_any_stage(tmp_path, monkeypatch, capsys):
    import flows.pipeline as pipeline

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"select": {"run": ["ok", "$(touch pwned)"]}}))
    monkeypatch.setattr(pipeline, "ROOT", tmp_path)
    ran: list[int] = []
    assert pipeline.guarded(lambda: ran.append(1)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert ran == [] and len(err) == 1 and err[0].startswith("error: params.yaml select.run: '$(touch pwned)'")
