"""The team's MLflow server with authentication: `mlflow server --app-name basic-auth` on 127.0.0.1, as docs/team.md's
team section starts it. Right credentials (MLFLOW_TRACKING_USERNAME / PASSWORD) log a run; wrong or missing ones end
a stage in one `error:` line that names the server and never the password."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from stages._common import EXIT_BAD_INPUT
from tests.test_mlflow_server import free_port

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "admin"
PASSWORD = "Adm1n-" + secrets.token_hex(8)  # MLflow ships no default: the first start creates admin with this one


def answers(url: str, user: str, password: str) -> int:
    """HTTP status of a store query with basic auth (0: no answer yet)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` with its user store, secret key and admin password in a temp dir."""
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs mlflow[auth] (pip install -e '.[auth]')")
    tmp = tmp_path_factory.mktemp("mlflow_auth")
    config = tmp / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp / 'basic_auth.db'}\nadmin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = os.environ | {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port",
           str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
           "--artifacts-destination", str(tmp / "artifacts")]  # fmt: skip
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while answers(url, ADMIN, PASSWORD) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_the_server_refuses_anyone_without_credentials(auth_server):
    assert answers(auth_server, ADMIN, "not-" + PASSWORD) == 401


def test_right_credentials_log_a_run(auth_server, monkeypatch, tmp_path):
    from mlflow import MlflowClient

    from infosift.tracking_live import training_run

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    with training_run(auth_server, "team", "v-4-s0-nll", "key-auth", params={"train.lr": 0.1}, root=tmp_path) as step:
        step({"step": 1, "loss": 2.5, "lr": 0.1})
        step({"step": 2, "loss": 2.0, "lr": 0.1})
    client = MlflowClient(auth_server)
    (run,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] == 2.0


@pytest.mark.parametrize("password", ["wrong-" + secrets.token_hex(6), None])
def test_wrong_or_missing_credentials_end_compare_in_one_line_without_the_password(auth_server, tmp_path, password):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"compare": {"mlflow": True, "tracking_uri": auth_server}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")} | {"PYTHONPATH": str(ROOT)}
    if password is not None:
        env |= {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.compare"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == EXIT_BAD_INPUT and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: MLflow at {auth_server}: the tracking server did not accept the credentials")
    for secret in (password, PASSWORD):
        assert secret is None or secret not in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_colleague_logs_once_the_admin_grants_edit_and_a_refusal_is_one_line(auth_server, monkeypatch, tmp_path):
    """docs/team.md's recipe: the admin creates a user and grants EDIT on the experiment; before that, the server's
    default READ refuses the user's run with one TrackingError naming the user, not the password."""
    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    from infosift.errors import TrackingError
    from infosift.tracking_live import training_run

    alice = "Al1ce-" + secrets.token_hex(6)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    admin = get_app_client("basic-auth", tracking_uri=auth_server)
    admin.create_user("alice", alice)
    experiment = MlflowClient(auth_server).create_experiment("shared")

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", alice)
    with pytest.raises(TrackingError) as err:
        with training_run(auth_server, "shared", "v", "key-alice", root=tmp_path):
            pass
    assert str(err.value).startswith(f"MLflow at {auth_server}: user alice may not do this") and alice not in str(err)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    admin.grant_user_permission("alice", "experiment", experiment, "EDIT")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", alice)
    with training_run(auth_server, "shared", "v", "key-alice", root=tmp_path) as step:
        step({"step": 1, "loss": 1.0, "lr": 0.1})
    (run,) = MlflowClient(auth_server).search_runs([experiment])
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] == 1.0
