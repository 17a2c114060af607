"""A real `mlflow server` (SQLite backend, proxied --artifacts-destination) on 127.0.0.1, fed by the finetune and
compare stages on a tiny results tree: live loss, datasets by content hash, transformers-flavor models, the
registry's champion alias moving to a second version, the experiment's kind tag; then the UI in headless chromium.

The fine-tunes are real (tiny random Llama, a few steps); evaluate's metrics are written by hand, as in
test_tracking.py, so that the second compare run can make the other model the champion.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from infosift.hashing import file_sha256
from infosift.manifest import build_manifest
from infosift.tracking import DIGEST_LEN
from tests.tiny import write_jsonl

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["fishersft-4-s0-nll", "fishersft-4-s1-nll"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free port, its own process group (stopped with everything it forked)."""
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    store = ["--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts")]
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        *store,
    ]
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                # the store, not just /health: a fresh server builds its SQLite tables on the first request
                with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, tmp
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)  # uvicorn stops at once; the CLI parent can take 20 s more
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def write_metrics(root: Path, nll: dict[str, float]) -> None:
    for name, value in {"base": 3.0, **nll}.items():
        path = root / "results/evaluate" / name / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"nll_per_token": value}))


@pytest.fixture(scope="module")
def pipeline(server, tiny_model_dir, tmp_path_factory):
    """Two real fine-tunes (their loss logged live), then compare twice: the second time the other model wins."""
    import stages.compare
    import stages.finetune

    url, _ = server
    root = tmp_path_factory.mktemp("repo")
    pool = [{"id": f"r{i}", "prompt": f"tom has {i} apples ?", "response": f"tom has {i} . #### {i}", "source": "t"}
            for i in range(8)]  # fmt: skip
    write_jsonl(root / "data/download/pool.jsonl", pool)
    write_jsonl(root / "data/download/test.jsonl", pool[:3])
    sha = {part: file_sha256(root / f"data/download/{part}.jsonl") for part in ("pool", "test")}
    (root / "data/download/manifest.json").write_text(json.dumps({"dataset": "gsm8k", "sha256": sha}))
    manifests = {}
    for seed in (0, 1):
        idx = np.random.default_rng(seed).permutation(len(pool))[:4]
        ids, gains = [r["id"] for r in pool], np.ones(4)
        m = build_manifest(variant="fishersft", selector="fishersft", params={"ridge": 1.0}, budget=4, seed=seed,
                           ids=ids, indices=idx, gains=gains, inputs={"features": "x"})  # fmt: skip
        path = root / f"results/select/fishersft-4/seed-{seed}/manifest.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(m))
        manifests[seed] = m
    params = {
        "model": {"base_model": str(tiny_model_dir), "trust_remote_code": False},
        "download": {"dataset": "gsm8k"},
        "select": {"run": ["fishersft"], "budgets": [4], "seeds": [0, 1], "budget_unit": "examples"},
        "finetune": {"losses": ["nll"], "max_length": 64,
                     "train": {"learning_rate": 1e-3, "num_train_epochs": 2, "per_device_train_batch_size": 2}},
        "compare": {"bootstrap": 100, "mlflow": True, "experiment": "infosift", "tracking_uri": url,
                    "log_models": True, "champion_metric": "nll_per_token"},
    }  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    old_cwd, old_uri = Path.cwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)
    try:
        for seed in (0, 1):
            stages.finetune.main(["fishersft", "4", str(seed), "nll"])
        write_metrics(root, {NAMES[0]: 2.0, NAMES[1]: 2.5})
        stages.compare.main([])
        write_metrics(root, {NAMES[0]: 2.0, NAMES[1]: 1.5})
        stages.compare.main([])
        stages.compare.main([])  # a rerun with the same champion: no duplicate version
    finally:
        os.chdir(old_cwd)
        if old_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return url, root, manifests, sha


def client_and_runs(url: str):
    from mlflow import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name("infosift")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, exp, runs, parents


def test_runs_datasets_and_live_loss(pipeline):
    url, root, manifests, sha = pipeline
    client, exp, runs, parents = client_and_runs(url)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(parents) == 3  # one per compare run: every live training run was taken in as a nested run
    first = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in first) == ["base", *NAMES]
    for seed, name in enumerate(NAMES):
        (run,) = [r for r in first if r.info.run_name == name]
        assert run.data.tags["infosift.run_kind"] == "training"  # the run finetune created, reused
        steps = (root / "results/finetune" / name / "train_loss.csv").read_text().strip().splitlines()[1:]
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [int(line.split(",")[0]) for line in steps] and len(steps) == 4
        assert run.data.metrics["nll_per_token"] == (2.0, 2.5)[seed]
        inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
        assert inputs == {
            "gsm8k-pool": sha["pool"][:DIGEST_LEN],
            "gsm8k-test": sha["test"][:DIGEST_LEN],
            f"fishersft-4-s{seed}": manifests[seed]["hash"][:DIGEST_LEN],
        }
    parent_inputs = {d.dataset.name for d in parents[0].inputs.dataset_inputs}
    assert parent_inputs == {"gsm8k-pool", "gsm8k-test"}


def test_champion_is_registered_loadable_and_moves(pipeline):
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM

    url, root, _, _ = pipeline
    client, _, _, parents = client_and_runs(url)
    versions = sorted(client.search_model_versions("name = 'infosift-gsm8k'"), key=lambda v: int(v.version))
    assert [(v.version, v.tags["infosift.variant"]) for v in versions] == [("1", NAMES[0]), ("2", NAMES[1])]
    assert client.get_model_version_by_alias("infosift-gsm8k", "champion").version == "2"
    assert parents[1].data.tags["infosift.champion"] == NAMES[1]
    assert [p.data.tags["infosift.champion_version"] for p in parents] == ["1", "2", "2"]

    mlflow.set_tracking_uri(url)
    loaded = mlflow.transformers.load_model("models:/infosift-gsm8k@champion", return_type="components")
    saved = AutoModelForCausalLM.from_pretrained(root / "models" / NAMES[1])
    for (k, a), (_, b) in zip(loaded["model"].state_dict().items(), saved.state_dict().items(), strict=True):
        assert torch.equal(a.float(), b.float()), k  # the champion's own weights, not the other model's
    assert mlflow.transformers.load_model("models:/infosift-gsm8k/1").task == "text-generation"  # a pipeline too


def test_ui_shows_the_runs_in_a_headless_browser(pipeline, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    url, _, _, _ = pipeline
    _, exp, _, _ = client_and_runs(url)
    page = f"{url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1500,900",
             "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "pipeline-" in dom, dom[-2000:]  # the runs table rendered the pipeline runs
    shot = tmp_path / "mlflow_runs.png"
    subprocess.run([*flags, f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("INFOSIFT_SCREENSHOT"):  # to refresh the README's copy: INFOSIFT_SCREENSHOT=docs/x.png
        shutil.copy(shot, ROOT / os.environ["INFOSIFT_SCREENSHOT"])
