"""prefect.yaml against a real `prefect server start` on 127.0.0.1: `prefect deploy` creates the pipeline deployment
with the schedule, parameters, work pool and working directory that prefect.yaml declares."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import httpx
import pytest

from flows.pipeline import ROOT
from flows.serve import declared

pytestmark = pytest.mark.server


@pytest.fixture
def prefect_server(tmp_path):
    """Environment of a fresh Prefect server (own PREFECT_HOME and database) on a free port; stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    log = (tmp_path / "server.log").open("w")
    cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_prefect_deploy_creates_the_declared_deployment(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    spec = declared("nightly")

    def prefect(*args: str) -> str:
        proc = subprocess.run(["prefect", *args], cwd=ROOT, env=prefect_server, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    prefect("work-pool", "create", spec["work_pool"]["name"], "--type", "process")
    prefect("--no-prompt", "deploy", "--all")
    assert f"infosift-pipeline/{spec['name']}" in prefect("deployment", "ls")  # 422 with fastapi>=0.151

    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            d = client.read_deployment_by_name(f"infosift-pipeline/{spec['name']}")
    assert d.work_pool_name == spec["work_pool"]["name"]
    assert d.entrypoint == spec["entrypoint"]
    assert d.parameters == spec["parameters"]
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules] == [
        (s["cron"], s["timezone"], s["active"]) for s in spec["schedules"]
    ]
    assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == spec["concurrency_limit"]
    # the worker runs the flow in the checkout that deployed it
    assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
