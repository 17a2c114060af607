"""Tracking that fails whole: compare logs before it commits and undoes its part when MLflow fails, a retry leaves
no orphan; a tracking error mid-training fails the fine-tune unless compare.tracking says optional; two fine-tunes
starting at once on a fresh SQLite store both land. All against SQLite files in tmp_path, no server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infosift.errors import TrackingError
from infosift.hashing import file_sha256
from infosift.tracking import train_key
from infosift.tracking_live import PARENT_TAG, find_training_run, training_run
from stages._common import EXIT_BAD_INPUT, EXIT_TRANSIENT
from tests.test_stage_errors import compare_workspace, one_error_line, write_params

ROOT = Path(__file__).resolve().parent.parent
NAME = "random-2-s0-nll"


def runs(uri: str, experiment: str = "infosift", deleted: bool = False) -> list:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    return client.search_runs([exp.experiment_id], run_view_type=view)


@pytest.fixture
def tracked_workspace(monkeypatch, tmp_path, tiny_model_dir):
    """compare's smallest tree with MLflow on a fresh SQLite store, a real (tiny) model for the fine-tune, and that
    fine-tune's live training run, finished, as finetune leaves it."""
    cwd = compare_workspace(monkeypatch, tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["compare"] = {"mlflow": True, "tracking_uri": uri, "log_models": True, "bootstrap": 100}
    params["download"] = {"dataset": "gsm8k"}
    params["model"] = {"base_model": str(tiny_model_dir)}
    write_params(cwd, params)
    records = [{"id": i, "prompt": f"q {i}", "response": f"a {i}", "source": "t"} for i in "abc"]
    for part in ("pool", "test"):
        (cwd / f"data/download/{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    sha = {part: file_sha256(cwd / f"data/download/{part}.jsonl") for part in ("pool", "test")}
    (cwd / "data/download/manifest.json").write_text(json.dumps({"sha256": sha}))
    model = cwd / "models" / NAME
    shutil.copytree(tiny_model_dir, model)
    (model / "infosift.json").write_text(json.dumps({"manifest_hash": "m", "n_train": 2}))
    (cwd / "results/finetune" / NAME).mkdir(parents=True)
    (cwd / "results/finetune" / NAME / "train_loss.csv").write_text("step,epoch,loss,lr\n1,0,2.5,0.1\n2,0,2.0,0.1\n")
    with training_run(uri, "infosift", NAME, train_key(model), root=cwd) as on_step:
        on_step({"step": 1, "loss": 2.5, "lr": 0.1})
        on_step({"step": 2, "loss": 2.0, "lr": 0.1})
    (live,) = runs(uri)
    return cwd, uri, live.info.run_id


def test_compare_undoes_its_logging_when_a_model_fails_to_log_and_the_retry_leaves_no_orphan(
    tracked_workspace, monkeypatch, capsys
):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    import infosift.tracking
    from stages.compare import main

    cwd, uri, live_id = tracked_workspace

    def refuse(v, trust_remote_code):
        raise MlflowException("the artifact store refused the model")

    real = infosift.tracking._log_transformers
    monkeypatch.setattr(infosift.tracking, "_log_transformers", refuse)
    line = one_error_line(monkeypatch, capsys, main, [])
    assert line.startswith(f"error: MLflow at {uri}: ") and "the artifact store refused the model" in line, line
    assert "nothing of this run was kept" in line
    assert not (cwd / "results/compare").exists()  # outputs committed only after the logging
    (left,) = runs(uri)  # the parent and the base run it made are deleted; the live run is handed back as it was
    assert left.info.run_id == live_id and left.info.status == "FINISHED" and PARENT_TAG not in left.data.tags
    assert len(runs(uri, deleted=True)) == 2

    monkeypatch.setattr(infosift.tracking, "_log_transformers", real)
    main([])
    assert (cwd / "results/compare/metrics.json").exists()
    active = runs(uri)
    parents = [r for r in active if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags["infosift.variant"]: r for r in active if r not in parents}
    assert set(children) == {"base", NAME} and len(active) == 3  # no orphan, no second run of the fine-tune
    assert all(r.data.tags[PARENT_TAG] == parents[0].info.run_id for r in children.values())
    assert children[NAME].info.run_id == live_id  # the retry took the live run in
    history = MlflowClient(uri).get_metric_history(live_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.0)]  # the curve once, not again


def test_compare_with_tracking_optional_keeps_its_results_when_logging_fails(tracked_workspace, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    import infosift.tracking
    from stages.compare import main

    cwd, uri, live_id = tracked_workspace
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["compare"]["tracking"] = "optional"
    write_params(cwd, params)
    monkeypatch.setattr(
        infosift.tracking, "_log_transformers", lambda v, t: (_ for _ in ()).throw(MlflowException("no"))
    )
    main([])
    err = capsys.readouterr().err
    assert "warning: MLflow at" in err and "compare.tracking: optional" in err
    assert (cwd / "results/compare/metrics.json").exists()
    assert [r.info.run_id for r in runs(uri)] == [live_id]  # undone all the same


def test_a_training_run_under_a_parent_that_never_finished_is_taken_in_again(tmp_path):
    """Where the undo itself could not reach the store, the next compare still takes the run in."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with training_run(uri, "exp", "v", "key-1", root=tmp_path):
        pass
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exp").experiment_id
    parent = client.create_run(exp, run_name="pipeline")
    (run,) = client.search_runs([exp], "tags.`infosift.train_key` = 'key-1'")
    client.set_tag(run.info.run_id, PARENT_TAG, parent.info.run_id)
    for status in ("RUNNING", "FAILED"):  # killed mid-way, or failed
        if status == "FAILED":
            client.set_terminated(parent.info.run_id, "FAILED")
        assert find_training_run(client, exp, "key-1").info.run_id == run.info.run_id
    client.delete_run(parent.info.run_id)
    assert find_training_run(client, exp, "key-1").info.run_id == run.info.run_id
    client.restore_run(parent.info.run_id)
    client.set_terminated(parent.info.run_id, "FINISHED")
    assert find_training_run(client, exp, "key-1") is None  # a finished pipeline run holds it


@pytest.mark.parametrize("required", [True, False])
def test_a_tracking_error_mid_training_fails_the_fine_tune_unless_optional(tmp_path, monkeypatch, capsys, required):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real = MlflowClient.log_batch
    calls = []

    def flaky(self, run_id, metrics=(), params=(), tags=()):
        calls.append(len(metrics))
        if metrics and len(calls) > 2:  # the first step lands, then the store goes away
            raise MlflowException("database disk image is malformed")
        return real(self, run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    steps = []
    with training_run(uri, "exp", "v", "k", params={"train.lr": 0.1}, root=tmp_path, required=required) as on_step:
        try:
            for step in (1, 2, 3):
                on_step({"step": step, "loss": 1.0, "lr": 0.1})
                steps.append(step)
        except TrackingError as e:
            assert required and str(e).startswith(f"MLflow at {uri}: the tracking server refused the request")
            assert "compare.tracking: optional" in str(e) and "\n" not in str(e)
            raise_after = True
        else:
            raise_after = False
    assert raise_after == required
    assert steps == ([1] if required else [1, 2, 3])
    if not required:
        assert "warning: MLflow at" in capsys.readouterr().err


def test_finetune_reads_compare_tracking(tmp_path, monkeypatch):
    """compare.tracking reaches the live run; anything but required/optional is one error naming it."""
    import stages.finetune
    from infosift.train import TrainConfig
    from stages._common import StageError

    seen = {}
    monkeypatch.setattr(stages.finetune, "training_run", lambda *a, **k: seen.update(k))
    monkeypatch.chdir(tmp_path)
    for value, required in (("optional", False), ("required", True), (None, True)):
        compare = {"mlflow": True} | ({"tracking": value} if value else {})
        write_params(tmp_path, {"compare": compare})
        stages.finetune.live_loss("v", "k", "m", TrainConfig())
        assert seen["required"] is required
    write_params(tmp_path, {"compare": {"tracking": "sometimes"}})
    with pytest.raises(StageError, match="compare.tracking: must be one of required, optional"):
        stages.finetune.live_loss("v", "k", "m", TrainConfig())


WORKER = """
import sys, time
from pathlib import Path
from infosift.tracking_live import training_run
uri, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
(go.parent / f"ready-{name}").write_text("")
while not go.exists():
    time.sleep(0.005)
with training_run(uri, "infosift", name, f"key-{name}", params={"train.lr": 0.1}, root=go.parent) as on_step:
    for step in range(1, 11):
        on_step({"step": step, "loss": 1.0 / step, "lr": 0.1})
"""


def test_two_fine_tunes_at_once_on_a_fresh_sqlite_store_both_land(tmp_path):
    """Both would run MLflow's schema migrations on the new file ('duplicate column name') and create the experiment;
    started together (a barrier file), both runs must land whole."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, name, str(go)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("a", "b")
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{n}").exists() for n in "ab") and time.monotonic() < deadline:
        time.sleep(0.05)
    go.write_text("")
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    landed = runs(uri)
    assert sorted(r.info.run_name for r in landed) == ["a", "b"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["train_loss"] == 0.1 for r in landed)


def test_with_a_ray_address_a_sqlite_store_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    import flows.pipeline as fp

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(fp, "ROOT", tmp_path)
    write_params(tmp_path, {"compare": {"mlflow": True}})
    ran: list[int] = []
    assert fp.guarded(lambda: ran.append(1), ray_address="auto") == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert ran == [] and len(err) == 1, err
    assert err[0].startswith(f"error: MLflow store sqlite:///{tmp_path.resolve() / 'mlflow.db'}: with a Ray address")
    write_params(tmp_path, {"compare": {"mlflow": False}})
    assert fp.cluster_env() == {}  # nothing to track: nothing refused


def test_workers_get_the_drivers_tracking_and_judge_variables_and_nothing_else(tmp_path, monkeypatch):
    import flows.pipeline as fp

    monkeypatch.setattr(fp, "ROOT", tmp_path)
    write_params(
        tmp_path,
        {"compare": {"tracking_uri": "http://mlflow.team:5000"}, "evaluate": {"mt_bench": {"judge_api_key_env": "J"}}},
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.setenv("J", "sk-judge")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    assert fp.cluster_env() == {
        "MLFLOW_TRACKING_URI": "http://mlflow.team:5000",
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "J": "sk-judge",
    }
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mine:443")  # this shell's choice wins, as for a stage here
    assert fp.cluster_env()["MLFLOW_TRACKING_URI"] == "https://mine:443"


def test_the_finetune_stage_fails_in_one_line_when_tracking_breaks_mid_training(
    tmp_path, monkeypatch, capsys, tiny_model_dir
):
    """A real (tiny) fine-tune whose store fails after its first step: one error line and no model (with
    compare.tracking optional, training_run warns instead: the test above)."""
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    import stages.finetune
    from infosift.manifest import build_manifest
    from stages._common import run
    from tests.tiny import write_jsonl

    pool = [{"id": f"r{i}", "prompt": f"tom has {i} apples ?", "response": f"tom has {i} . #### {i}", "source": "t"}
            for i in range(6)]  # fmt: skip
    write_jsonl(tmp_path / "data/download/pool.jsonl", pool)
    manifest = build_manifest(variant="random", selector="random", params={}, budget=4, seed=0,
                              ids=[r["id"] for r in pool], indices=np.arange(4), gains=None, inputs={})  # fmt: skip
    path = tmp_path / "results/select/random-4/seed-0/manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_params(tmp_path, {
        "model": {"base_model": str(tiny_model_dir), "trust_remote_code": False},
        "finetune": {"losses": ["nll"], "max_length": 32,
                     "train": {"learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 1}},
        "compare": {"mlflow": True, "tracking_uri": uri},  # tracking: required, the default
    })  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real, metric_calls = MlflowClient.log_batch, []

    def flaky(self, run_id, metrics=(), params=(), tags=()):
        if metrics:
            metric_calls.append(1)
            if len(metric_calls) > 1:
                raise MlflowException("database is locked")
        return real(self, run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    monkeypatch.setattr(sys, "argv", ["stage", "random", "4", "0", "nll"])
    with pytest.raises(SystemExit) as exit_:
        run(stages.finetune.main)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]  # above it: MLflow's and tqdm's chatter
    assert exit_.value.code in (EXIT_BAD_INPUT, EXIT_TRANSIENT) and len(errors) == 1 and "Traceback" not in err, err
    line = errors[0]
    assert line.startswith(f"error: MLflow at {uri}: the tracking server refused the request (database is locked)")
    assert len(metric_calls) == 2  # it stopped at the step that could not be logged, not at the end
    assert not (tmp_path / "models/random-4-s0-nll").exists() and not list((tmp_path / "models").glob(".tmp-*"))
