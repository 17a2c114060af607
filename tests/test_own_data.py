"""Bring your own data: a folder or one file as download.dataset, a carved test split, the fetch stages that are
the only door for data from outside the repository, and the preflight check of a run's whole configuration."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages._common import EXIT_BAD_INPUT, EXIT_TRANSIENT
from tests.test_e2e import MT_JUDGE_PROMPTS, MT_QUESTIONS, MT_REFERENCES, TINY_PARAMS
from tests.tiny import save_tiny_model, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def tally_rows(n: int, seed: int) -> list[dict]:
    """A made-up dataset with its own field names (ask / reply), in words the tiny tokenizer knows."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 90), rng.randint(1, 90)
        rows.append({"ask": f"what is {a} plus {b} ?", "reply": f"{a} plus {b} = {a + b} . #### {a + b}"})
    return rows


def run_module(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


def one_error_line(proc: subprocess.CompletedProcess, code: int = EXIT_BAD_INPUT) -> str:
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- where a dataset is found ------------------------------------------------------------------------------
def test_a_file_a_folder_a_name_and_a_hub_id(tmp_path, monkeypatch):
    from infosift.data import dataset_name, is_dataset_path, locate_dataset
    from infosift.errors import DataError

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "own/tally/train.jsonl", tally_rows(3, 0))
    write_jsonl(tmp_path / "own/tally/test.jsonl", tally_rows(2, 1))
    write_jsonl(tmp_path / "one.jsonl", tally_rows(3, 0))
    assert [is_dataset_path(d) for d in ("gsm8k", "openai/gsm8k", "one.jsonl", "own/tally", "/x/y")] == [
        False, False, True, True, True]  # fmt: skip
    assert [dataset_name(d) for d in ("gsm8k", "openai/gsm8k", "./one.jsonl", "own/tally/")] == [
        "gsm8k", "gsm8k", "one", "tally"]  # fmt: skip
    folder = locate_dataset("own/tally", "train", "test", None, "hub")
    assert folder.name == "tally" and folder.splits == {"train": Path("own/tally/train.jsonl"),
                                                        "test": Path("own/tally/test.jsonl")}  # fmt: skip
    assert locate_dataset("tally", "train", "test", "own", "hub").splits == folder.splits  # a name: the mirror
    assert locate_dataset(str(tmp_path / "one.jsonl"), "train", None, None, "hub").splits == {
        "train": tmp_path / "one.jsonl"}  # fmt: skip
    with pytest.raises(DataError, match="one file holds only a train split; .*download.test_split: null"):
        locate_dataset("one.jsonl", "train", "test", None, "hub")
    (tmp_path / "own/tally/test.jsonl").unlink()
    with pytest.raises(DataError, match=r"no test.jsonl, .*\(has: train.jsonl\).*download.test_split: null"):
        locate_dataset("own/tally", "train", "test", None, "hub")
    with pytest.raises(DataError, match="nope.jsonl: no such file or folder"):
        locate_dataset("./nope.jsonl", "train", None, None, "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="not in the local mirror .* the hub \\(owner/set\\) is off here"):
        locate_dataset("owner/set", "train", "test", "own", "hub", download=False)


def test_carved_test_split_is_seeded_and_never_in_pool_or_target():
    from infosift.errors import DataError
    from infosift.splits import split_records

    train = [{"id": f"r{i}", "prompt": "p", "response": "r"} for i in range(40)]
    a = split_records(train, None, pool_size=20, target_size=5, test_size=8, seed=3)
    b = split_records(train, None, pool_size=10, target_size=5, test_size=8, seed=3)
    test_ids = {r["id"] for r in a.test}
    assert len(test_ids) == 8 and a.carved == 8 and a.leaked == 0
    assert not test_ids & {r["id"] for r in a.pool + a.target}
    assert [r["id"] for r in b.test] == [r["id"] for r in a.test]  # the pool's size does not move the test split
    assert [r["id"] for r in split_records(train, None, test_size=8, seed=4).test] != [r["id"] for r in a.test]
    with pytest.raises(DataError, match="no test split"):
        split_records(train, None, seed=0)
    with pytest.raises(DataError, match="would hold out every one of the 40"):
        split_records(train, None, test_size=40, seed=0)


# -- the fetch stages and download, as DVC runs them ---------------------------------------------------------
def one_file_workspace(tmp_path: Path, **download) -> Path:
    data = tmp_path / "elsewhere" / "tally.jsonl"
    write_jsonl(data, tally_rows(40, 0))
    cwd = tmp_path / "ws"
    cwd.mkdir()
    params = {"dataset": str(data), "mirror_dir": None, "pool_size": 20, "target_size": 4, "test_split": None,
              "test_size": 6, "fields": {"prompt": "ask", "response": "reply"}, **download}  # fmt: skip
    (cwd / "params.yaml").write_text(yaml.safe_dump({"download": params}))
    return cwd


def test_one_jsonl_file_without_a_test_split(tmp_path):
    cwd = one_file_workspace(tmp_path)
    proc = run_module(cwd, "stages.fetch", "dataset")
    assert proc.returncode == 0, proc.stderr
    stamp = (cwd / "data/source.json").read_bytes()
    assert json.loads(stamp)["splits"].keys() == {"train"}
    assert run_module(cwd, "stages.fetch", "dataset").returncode == 0
    assert (cwd / "data/source.json").read_bytes() == stamp  # nothing changed: the same bytes, DVC reruns nothing
    proc = run_module(cwd, "stages.download")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((cwd / "data/download/manifest.json").read_text())
    assert manifest["dataset"] == "tally" and manifest["test_held_out_from_train"] == {"n": 6, "seed": 2}
    assert manifest["counts"] == {"pool": 20, "target": 4, "validation": 0, "test": 6}
    split = {n: {r["id"] for r in read_jsonl(cwd / f"data/download/{n}.jsonl")} for n in ("pool", "target", "test")}
    assert not split["test"] & (split["pool"] | split["target"])
    assert {r["source"] for r in read_jsonl(cwd / "data/download/test.jsonl")} == {"tally"}

    with (tmp_path / "elsewhere/tally.jsonl").open("a") as f:  # an edit of the file: a new hash to rerun on
        f.write(json.dumps({"ask": "what is 1 plus 1 ?", "reply": "2"}) + "\n")
    assert run_module(cwd, "stages.fetch", "dataset").returncode == 0
    assert (cwd / "data/source.json").read_bytes() != stamp


@pytest.mark.parametrize(
    ("download", "message"),
    [
        ({"test_size": None}, "download.test_size: required when download.test_split is null"),
        ({"test_split": "test"}, "download.dataset=.*one file holds only a train split"),
        ({"test_size": 40}, "download: test_size 40 would hold out every one of the 40 train records"),
    ],
)
def test_one_file_mistakes_are_one_line(tmp_path, download, message):
    import re

    cwd = one_file_workspace(tmp_path, **download)
    assert re.search(message, one_error_line(run_module(cwd, "stages.download")))


def test_no_mirror_and_no_hub_is_one_line_naming_mirror_dir_and_dataset(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": {"dataset": "gsm8k", "mirror_dir": "../no"}}))
    proc = run_module(tmp_path, "stages.fetch", "dataset", env={"HF_DATASETS_OFFLINE": "1"})
    line = one_error_line(proc, EXIT_TRANSIENT)  # the hub's network error: a rerun may reach it
    assert "download.mirror_dir='../no'" in line and "download.dataset='gsm8k'" in line and "openai/gsm8k" in line
    assert not (tmp_path / "data/source.json").exists()


def mt_bench_folder(root: Path) -> Path:
    write_jsonl(root / "question.jsonl", MT_QUESTIONS)
    write_jsonl(root / "reference_answer_gpt-4.jsonl", MT_REFERENCES)
    write_jsonl(root / "judge_prompts.jsonl", MT_JUDGE_PROMPTS)
    return root


def test_mt_bench_is_fetched_only_for_a_reader_and_its_absence_names_the_param(tmp_path):
    from infosift.data import mt_bench_folder_files
    from infosift.errors import DataError

    folder = mt_bench_folder(tmp_path / "bench")
    write = (tmp_path / "params.yaml").write_text
    copy = {reader: tmp_path / "data" / "mt_bench" / reader for reader in ("evaluate", "sketch")}
    write(yaml.safe_dump({"evaluate": {"mt_bench": {"limit": 0, "dir": str(folder)}}, "sketch": {"sources": {
        "b": "mt_bench"}}}))  # fmt: skip
    for reader in copy:
        assert run_module(tmp_path, "stages.fetch", "mt_bench", reader).returncode == 0
    with pytest.raises(DataError, match="not fetched: evaluate.mt_bench.limit is 0"):
        mt_bench_folder_files(copy["evaluate"])  # the suite is off: evaluate's copy says so, sketch's is there
    files = mt_bench_folder_files(copy["sketch"])
    assert files.questions.read_bytes() == (folder / "question.jsonl").read_bytes()
    write(yaml.safe_dump({"evaluate": {"mt_bench": {"limit": 1, "dir": str(tmp_path / "gone")}}}))
    for reader in copy:
        proc = run_module(tmp_path, "stages.fetch", "mt_bench", reader, env={"HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr  # recorded; the reader stops, naming the param
    with pytest.raises(DataError, match="evaluate.mt_bench.dir=.*gone.*question.jsonl: not found"):
        mt_bench_folder_files(copy["evaluate"])
    with pytest.raises(DataError, match="not fetched: no sketch source is mt_bench"):
        mt_bench_folder_files(copy["sketch"])


def test_a_reader_whose_suite_is_off_sees_the_same_bytes_every_time(tmp_path):
    """evaluate with the judged suite off depends on its copy: mirror or not, online or not, the bytes are the
    same, so no evaluation reruns because MT-Bench came or went."""
    write = (tmp_path / "params.yaml").write_text
    seen = []
    for folder in (mt_bench_folder(tmp_path / "bench"), tmp_path / "gone"):
        write(yaml.safe_dump({"evaluate": {"mt_bench": {"limit": 0, "dir": str(folder)}}}))
        assert run_module(tmp_path, "stages.fetch", "mt_bench", "evaluate").returncode == 0
        seen.append({f.name: f.read_bytes() for f in (tmp_path / "data/mt_bench/evaluate").iterdir()})
    assert seen[0] == seen[1]


# -- preflight: the whole configuration, before any stage --------------------------------------------------
@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """A `dvc` on PATH that only logs its arguments: any call means a stage was about to run."""
    log = tmp_path / "dvc-calls.log"
    script = tmp_path / "bin" / "dvc"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def config_workspace(tmp_path: Path, change: dict, model_dir: Path) -> Path:
    """This repository's dvc.yaml and params.yaml with the dataset in a folder of its own and ``change`` applied."""
    from stages._common import with_overrides

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
    write_jsonl(tmp_path / "own/tally/train.jsonl", tally_rows(20, 0))
    write_jsonl(tmp_path / "own/tally/test.jsonl", tally_rows(5, 1))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = {"download.dataset": "tally", "download.mirror_dir": str(tmp_path / "own"),
            "download.fields": {"prompt": "ask", "response": "reply"},
            "evaluate.mt_bench.dir": str(mt_bench_folder(tmp_path / "bench")), "model.base_model": str(model_dir),
            "sketch.sources": {"pool": "data/download/pool.jsonl", "bench": "mt_bench"}}  # fmt: skip
    (ws / "params.yaml").write_text(yaml.safe_dump(with_overrides(params, {**base, **change})))
    return ws


def test_the_defaults_with_a_new_dataset_pass(tmp_path, tiny_model_dir):
    from flows.preflight import problems

    ws = config_workspace(tmp_path, {"evaluate.answer_pattern": "#### (.*)"}, tiny_model_dir)
    assert problems(["compare", "sketch", "synthetic"], root=ws) is None  # its answers end in "#### n"


def test_judged_suite_at_a_missing_dir_stops_the_flow_before_download(
    tmp_path, monkeypatch, fake_dvc, capsys, tiny_model_dir
):
    import flows.pipeline as fp
    import flows.preflight as pre

    change = {"evaluate.mt_bench.limit": 2, "evaluate.mt_bench.dir": str(tmp_path / "nope")}
    ws = config_workspace(tmp_path, change, tiny_model_dir)
    monkeypatch.setattr(pre, "ROOT", ws)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert fp.main(["--stages", "compare"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: params.yaml evaluate.mt_bench.dir="), err
    assert "nope/question.jsonl: not found" in err[0]
    assert not fake_dvc.exists()  # no `dvc status`, no `dvc repro download`: nothing ran


@pytest.mark.parametrize(
    ("change", "stages", "message"),
    [
        ({"compare.bootstrap": 5}, ["compare"], "compare.bootstrap: must be >= 100"),
        ({"evaluate.n_test": 0}, ["compare"], "evaluate.n_test: must be >= 1"),
        ({"select.run": ["random", "nope"]}, ["compare"], r"select.run\[1\]: must be one of"),
        ({"model.base_model": "/no/model"}, ["embed"], "model.base_model: .*/no/model"),
        ({"finetune.train.lr": "fast"}, ["compare"], "unknown trainer argument 'lr' \\(did you mean learning_rate"),
        ({"embed.part": "everything"}, ["select"], "embed.part: must be one of"),
        ({"download.dataset": "other"}, ["embed"], "download.dataset='other'"),
        ({"sketch.sources": {"x": "missing.jsonl"}}, ["sketch"], "sketch.sources.x: missing.jsonl not found"),
        ({"synthetic.ridge": -1}, ["synthetic"], "synthetic.ridge: must be > 0"),
        ({"download.fields": {"prompt": "question", "response": "reply"}}, ["embed"], "download.fields=.*'question'"),
        ({"evaluate.answer_pattern": "ANSWER: (.*)"}, ["compare"],
         r"evaluate.answer_pattern='ANSWER: \(\.\*\)': no match in the first 5 responses"),
    ],
)
def test_a_mistake_anywhere_upstream_is_found_first(tmp_path, change, stages, message, tiny_model_dir):
    import re

    from flows.preflight import problems

    ws = config_workspace(tmp_path, change, tiny_model_dir)
    assert re.search(message, problems(stages, root=ws) or "")


def test_evidence_checks_each_pools_params_before_its_experiment(tmp_path, monkeypatch, tiny_model_dir):
    import flows.evidence as ev
    import flows.preflight as pre

    ws = config_workspace(tmp_path, {}, tiny_model_dir)
    monkeypatch.setattr(pre, "ROOT", ws)
    profile = {"overrides": {"select.budgets": [200]}, "pools": {"clean": {}, "bad": {"compare.bootstrap": 1}}}
    (ws / "params.evidence.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setattr(ev, "PROFILE", ws / "params.evidence.yaml")
    monkeypatch.setattr(ev, "run_pool", lambda *a: pytest.fail("an experiment started"))
    with pytest.raises(SystemExit, match="error: params.yaml compare.bootstrap: must be >= 100"):
        ev.main(["--pools", "clean", "bad"])


# -- the pipeline to the compare table on data of one's own -----------------------------------------------------
def own_data_repo(tmp: Path, download: dict) -> tuple[Path, dict]:
    """A git+DVC repo of this project with tiny params: a small matrix, no GSM8K suite, no MLflow."""
    repo = tmp / "repo"
    repo.mkdir()
    for item in ("dvc.yaml", "stages", "infosift"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, repo / item)
    params = json.loads(json.dumps(TINY_PARAMS))
    params["model"]["base_model"] = str(save_tiny_model(tmp / "tiny-model"))
    params["download"] = {"hub_cache": ".cache/datasets", "pool_size": 24, "target_size": 4, "seed": 0,
                          "fields": {"prompt": "ask", "response": "reply"}, **download}  # fmt: skip
    params["select"].update(run=["random", "fishersft"], budgets=[150], seeds=[0])
    params["evaluate"].update(n_test=4, gsm8k={"limit": 0}, mt_bench={"limit": 0, "dir": str(tmp / "no-mt-bench")})
    params["compare"].update(mlflow=False, bootstrap=100)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/data/\n/results/\n/models/\n/.cache/\n")
    env = {**os.environ, "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}  # fmt: skip
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"],
                ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):  # fmt: skip
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    return repo, env


LOOKS = {"fetch", "fetch_mt_bench@evaluate"}  # what compare reaches of the always-changed fetch stages


def repro(repo: Path, env: dict, *targets: str) -> set[str]:
    """`dvc repro`, and the stages it ran."""
    proc = subprocess.run(["dvc", "repro", *targets], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def assert_compare_table(repo: Path) -> None:
    import csv

    with (repo / "results/compare/table.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["selector"] for r in rows) == ["base", "fishersft", "random"]  # one budget, one seed
    assert all(r["n_examples"] == "4" and float(r["nll_per_token"]) > 0 for r in rows)


def test_own_folder_through_the_pipeline_to_the_compare_table(tmp_path):
    """A dataset in a folder of its own (download.mirror_dir names it alone), judged suite off, no ../shared."""
    write_jsonl(tmp_path / "own/tally/train.jsonl", tally_rows(40, 0))
    write_jsonl(tmp_path / "own/tally/test.jsonl", tally_rows(8, 1))
    repo, env = own_data_repo(tmp_path, {"dataset": "tally", "mirror_dir": str(tmp_path / "own")})
    ran = repro(repo, env, "compare")
    assert {"fetch", "fetch_mt_bench@evaluate", "download", "compare"} <= ran
    assert not {"sketch", "fetch_mt_bench@sketch"} & ran  # MT-Bench is fetched only for the readers that run
    assert_compare_table(repo)
    assert json.loads((repo / "data/download/manifest.json").read_text())["dataset"] == "tally"
    assert repro(repo, env, "compare") == LOOKS  # nothing changed: only the look at sources


def test_one_file_through_the_pipeline_and_an_edit_reruns_download(tmp_path):
    data = tmp_path / "tally.jsonl"
    write_jsonl(data, tally_rows(40, 0))
    download = {"dataset": str(data), "mirror_dir": None, "test_split": None, "test_size": 6}
    repo, env = own_data_repo(tmp_path, download)
    repro(repo, env, "compare")
    assert_compare_table(repo)
    assert json.loads((repo / "data/download/manifest.json").read_text())["test_held_out_from_train"]["n"] == 6

    rows = tally_rows(40, 0)
    rows[-1]["reply"] += " ."  # one example edited in place
    write_jsonl(data, rows)
    assert repro(repo, env, "fetch") == {"fetch"}
    status = subprocess.run(
        ["dvc", "status", "--json", "--with-deps", "compare"], cwd=repo, env=env, capture_output=True, text=True
    )
    stale = set(json.loads(status.stdout)) - LOOKS  # always changed: they look every time
    assert stale == {"download"}, status.stdout  # and what reads its outputs, only if they change


def test_dvc_repro_without_shared_reaches_the_hub_fallback_and_its_error(tmp_path):
    """A clone with no ../shared beside it: DVC runs fetch (no missing-dependency error of its own), which tries
    the mirror, then the hub (offline here), and stops with one line naming download.mirror_dir and the dataset."""
    repo, env = own_data_repo(tmp_path, {"dataset": "gsm8k", "mirror_dir": "../shared/data"})
    proc = subprocess.run(["dvc", "repro", "download"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert "download.mirror_dir='../shared/data', download.dataset='gsm8k'" in errors[0]
    assert "hub (openai/gsm8k)" in errors[0] and "No such file or directory" not in proc.stderr
    assert not (repo / "data/source.json").exists() and not (repo / "data/download").exists()


def test_every_stage_of_dvc_yaml_has_a_preflight_check():
    """A stage of the project's own pipeline without a check would be skipped by the preflight (a user's own
    stage is, on purpose): keep the two lists together."""
    import yaml

    from flows.preflight import CHECKS

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) <= set(CHECKS), set(stages) - set(CHECKS)
