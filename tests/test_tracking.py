"""MLflow lineage: the nested runs compare logs, built from a tiny results tree and a dvc.lock dict; the live
training run against a SQLite store; an unreachable server through the stage entry (no server anywhere)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infosift.errors import TrackingError
from infosift.hashing import file_sha256
from infosift.manifest import content_hash
from infosift.tracking import (
    DIGEST_LEN,
    DatasetRef,
    base_run,
    download_datasets,
    dvc_lock_hashes,
    lineage_tags,
    log_pipeline,
    numeric,
    pick_champion,
    registered_model_name,
    variant_run,
)
from infosift.tracking_live import find_training_run, redacted, tracking_uri, training_run
from stages._common import EXIT_TRANSIENT

ROOT = Path(__file__).resolve().parent.parent

LOCK = {
    "download": {"data/download": "md5-download"},
    "select@fishersft-4": {"data/embed": "md5-embed", "results/select/fishersft-4": "md5-select"},
    "finetune@fishersft-4-0-nll": {"models/fishersft-4-s0-nll": "md5-model"},
}
ROW = {"variant": "fishersft-4-s0-nll", "selector": "fishersft", "budget": 4, "seed": 0, "loss": "nll",
       "train_tokens": 90, "n_train": 4, "nll_per_token": 1.5, "done": True}  # fmt: skip


def write(root: Path, path: str, text: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """What select, finetune and evaluate write for one model, fishersft-4-s0-nll."""
    manifest = {"selector": "fishersft", "variant": "fishersft", "params": {"ridge": 1.0}, "seed": 0,
                "hash": "manifest-hash", "inputs": {"features": "features-sha"}, "seconds": 1.5}  # fmt: skip
    write(tmp_path, "results/select/fishersft-4/seed-0/manifest.json", json.dumps(manifest))
    write(tmp_path, "results/finetune/fishersft-4-s0-nll/train_loss.csv", "step,loss\n1,2.5\n2,2.0\n")
    write(tmp_path, "results/evaluate/fishersft-4-s0-nll/metrics.json", "{}")
    write(tmp_path, "results/evaluate/fishersft-4-s0-nll/per_example.jsonl", "")
    write(tmp_path, "models/fishersft-4-s0-nll/infosift.json", json.dumps({"manifest_hash": "manifest-hash", "n": 4}))
    return tmp_path


def test_variant_run_carries_params_lineage_tags_and_artifacts(tree):
    run = variant_run(ROW, "fishersft-4", LOCK, {"lr": 1e-4}, log_models=True, root=tree)
    assert run.name == "fishersft-4-s0-nll"
    assert run.params == {"selector": "fishersft", "variant": "fishersft", "budget": 4, "loss_type": "nll",
                          "selector_params": {"ridge": 1.0}, "seed": 0, "finetune": {"lr": 1e-4}}  # fmt: skip
    assert run.metrics == {"budget": 4, "seed": 0, "train_tokens": 90, "n_train": 4, "nll_per_token": 1.5,
                           "select_seconds": 1.5}  # fmt: skip
    assert run.tags == {
        "infosift.variant": "fishersft-4-s0-nll",
        "infosift.manifest_hash": "manifest-hash",
        "infosift.features_sha256": "features-sha",
        "infosift.train_key": content_hash({"manifest_hash": "manifest-hash", "n": 4}),
        "dvc.md5.data/embed": "md5-embed",
        "dvc.md5.results/select/fishersft-4": "md5-select",
        "dvc.md5.models/fishersft-4-s0-nll": "md5-model",
    }
    evaluated = tree / "results/evaluate/fishersft-4-s0-nll"
    assert run.artifacts == {
        "manifest": str(tree / "results/select/fishersft-4/seed-0/manifest.json"),
        "metrics": str(evaluated / "metrics.json"),
        "train_loss": str(tree / "results/finetune/fishersft-4-s0-nll/train_loss.csv"),
        "per_example": str(evaluated / "per_example.jsonl"),
    }
    assert run.model_dir == str(tree / "models/fishersft-4-s0-nll")  # logged with the transformers flavor
    assert run.step_metrics == {"train_loss": [(1, 2.5), (2, 2.0)]}
    selection = DatasetRef(
        "fishersft-4-s0", "results/select/fishersft-4/seed-0/manifest.json", "manifest-hash", "train", "selection"
    )
    assert run.datasets == [selection]


def test_a_variant_run_in_mlflow_names_the_base_its_model_was_trained_from(tree):
    """Lineage of a fine-tune's base (tracking.base_tags), read back from a SQLite store under tmp."""
    from mlflow import MlflowClient

    provenance = {"manifest_hash": "manifest-hash", "base_fingerprint": "f" * 64, "base_model": "/models/base"}
    write(tree, "models/fishersft-4-s0-nll/infosift.json", json.dumps(provenance))
    manifest = tree / "results/select/fishersft-4/seed-0/manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "ids": ["a"], "indices": [0]}))  # logged too
    uri = f"sqlite:///{tree / 'mlflow.db'}"
    run = variant_run(ROW, "fishersft-4", LOCK, {}, log_models=False, root=tree)
    logged = log_pipeline("pipeline", {}, {}, [run], {}, experiment="exp", root=tree, uri=uri)
    client = MlflowClient(uri)
    (nested,) = client.search_runs([logged.experiment_id], f"tags.mlflow.parentRunId = '{logged.run_id}'")
    assert nested.data.tags["infosift.base_fingerprint"] == "f" * 64
    assert nested.data.tags["infosift.base_model"] == "/models/base"
    assert nested.data.tags["infosift.train_key"] == content_hash(provenance)


def test_optional_artifacts_follow_what_exists(tree):
    (tree / "results/evaluate/fishersft-4-s0-nll/per_example.jsonl").unlink()
    (tree / "results/evaluate/fishersft-4-s0-nll/gsm8k_samples").mkdir()
    (tree / "models/fishersft-4-s0-nll/infosift.json").unlink()
    run = variant_run(ROW, "fishersft-4", {}, {}, log_models=False, root=tree)
    assert set(run.artifacts) == {"manifest", "metrics", "train_loss", "gsm8k_samples"}
    assert run.model_dir is None
    assert not any(k.startswith("dvc.md5.") for k in run.tags)  # a stage dvc.lock does not know adds no tags
    assert "infosift.train_key" not in run.tags  # a model without provenance has no live run to find


def test_paths_are_relative_by_default(tree, monkeypatch):
    monkeypatch.chdir(tree)
    run = variant_run(ROW, "fishersft-4", LOCK, {})
    assert run.artifacts["manifest"] == "results/select/fishersft-4/seed-0/manifest.json"
    assert run.model_dir == "models/fishersft-4-s0-nll"


def test_base_run():
    run = base_run({"base": "tiny"}, {"variant": "base", "budget": 0, "nll_per_token": 2.0})
    assert (run.name, run.params, run.tags) == ("base", {"model": {"base": "tiny"}}, {"infosift.variant": "base"})
    assert run.metrics == {"budget": 0, "nll_per_token": 2.0}
    assert run.artifacts == {"metrics": "results/evaluate/base/metrics.json"}


def test_lineage_tags_and_lock_hashes(tmp_path):
    lock = {"stages": {"download": {"deps": [{"path": "stages/download.py", "md5": "a"}],
                                    "outs": [{"path": "data/download", "md5": "b.dir"}, {"path": "x"}]}}}  # fmt: skip
    write(tmp_path, "dvc.lock", yaml.safe_dump(lock))
    hashes = dvc_lock_hashes(tmp_path / "dvc.lock")
    assert hashes == {"download": {"stages/download.py": "a", "data/download": "b.dir"}}
    assert lineage_tags(hashes, ("download", "embed")) == {
        "dvc.md5.stages/download.py": "a",
        "dvc.md5.data/download": "b.dir",
    }


def test_numeric_keeps_numbers_only():
    assert numeric({"a": 1, "b": 2.5, "c": True, "d": "x", "e": None}) == {"a": 1, "b": 2.5}


def test_download_datasets_take_digests_from_the_download_manifest(tmp_path):
    write(tmp_path, "data/download/pool.jsonl", '{"id": "a"}\n')
    write(tmp_path, "data/download/test.jsonl", '{"id": "b"}\n')
    write(tmp_path, "data/download/manifest.json", json.dumps({"sha256": {"pool": "f" * 64}}))
    refs = download_datasets("gsm8k", tmp_path)
    assert refs["pool"] == DatasetRef("gsm8k-pool", "data/download/pool.jsonl", "f" * 64, "pool")
    assert refs["pool"].digest == "f" * DIGEST_LEN
    # no recorded hash: the file's own sha256
    assert refs["test"].sha256 == file_sha256(tmp_path / "data/download/test.jsonl")
    assert refs["test"].context == "eval" and refs["test"].name == "gsm8k-test"


def test_champion_is_the_best_fine_tuned_row_in_the_metric_direction():
    rows = [
        {"variant": "base", "selector": "base", "nll_per_token": 0.1, "acc": 0.9},
        {"variant": "a", "selector": "random", "nll_per_token": 2.0, "acc": 0.2},
        {"variant": "b", "selector": "fishersft", "nll_per_token": 1.5, "acc": 0.1},
        {"variant": "c", "selector": "fishersft", "nll_per_token": float("nan"), "acc": 0.3},
    ]
    low = pick_champion(rows, "nll_per_token", True, "gsm8k")
    assert (low.variant, low.value, low.registered_name) == ("b", 1.5, "infosift-gsm8k")  # base and NaN left out
    assert pick_champion(rows, "acc", False, "gsm8k").variant == "c"
    assert pick_champion(rows, "mt_bench_score", False, "gsm8k") is None
    assert registered_model_name("my data/set") == "infosift-my-data-set"


def test_tracking_uri_precedence_and_redaction(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking_uri(tmp_path, "http://team:5000") == "http://team:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mine:5000")
    assert tracking_uri(tmp_path, "http://team:5000") == "http://mine:5000"
    assert redacted("https://alice:s3cret@host:8443/mlflow") == "https://host:8443/mlflow"


def test_live_training_run_shows_steps_while_running_then_compare_can_find_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with training_run(uri, "exp", "v-4-s0-nll", "key-1", params={"train.lr": 0.1}, root=tmp_path) as on_step:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("exp")
        for step, loss in ((1, 2.5), (2, 2.0)):
            on_step({"step": step, "epoch": 0, "loss": loss, "lr": 0.1})
        (running,) = client.search_runs([exp.experiment_id])
        assert running.info.status == "RUNNING"
        history = client.get_metric_history(running.info.run_id, "train_loss")
        assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.0)]
        assert find_training_run(client, exp.experiment_id, "key-1") is None  # not finished yet
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_run(running.info.run_id).info.status == "FINISHED"
    assert find_training_run(client, exp.experiment_id, "key-1").info.run_id == running.info.run_id
    assert find_training_run(client, exp.experiment_id, "other-key") is None

    with pytest.raises(RuntimeError), training_run(uri, "exp", "v", "key-2", root=tmp_path):
        raise RuntimeError("training broke")
    failed = client.search_runs([exp.experiment_id], "tags.`infosift.train_key` = 'key-2'")
    assert [r.info.status for r in failed] == ["FAILED"]
    assert find_training_run(client, exp.experiment_id, "key-2") is None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_training_run_against_an_unreachable_server_fails_fast(monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError, match=f"MLflow at {url}: cannot reach the tracking server"):
        with training_run(url, "exp", "v", "k"):
            pass
    assert time.monotonic() - start < 15


def test_compare_with_an_unreachable_server_ends_in_one_error_line(tmp_path):
    url = f"http://user:pw@127.0.0.1:{closed_port()}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"compare": {"mlflow": True, "tracking_uri": url}}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stages.compare"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == EXIT_TRANSIENT, proc.stderr  # unreachable: a rerun may find it up
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: MLflow at {redacted(url)}: cannot reach the tracking server ("), lines[0]
    assert "pw" not in lines[0]
    assert time.monotonic() - start < 30  # MLflow's own retries would take minutes
    assert not (tmp_path / "results").exists()  # failed before computing anything


def test_train_key_is_what_made_the_model_not_what_the_run_reported(tmp_path):
    """finetune tags its live run with the hash of its provenance before training; what training reports after
    ('trained': examples, truncation, processes) must not change the key compare recomputes to find that run."""
    from infosift.tracking import train_key

    made = {"base_fingerprint": "b", "manifest_hash": "m", "train_config": {"seed": 0}}
    (tmp_path / "infosift.json").write_text(json.dumps({**made, "trained": {"n_examples": 4, "processes": 2}}))
    assert train_key(tmp_path) == content_hash(made)
    (tmp_path / "infosift.json").write_text(json.dumps({**made, "manifest_hash": "other"}))
    assert train_key(tmp_path) != content_hash(made)
