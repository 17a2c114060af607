"""Prefect orchestration: the flow runs one `dvc repro <stage>` per stage in order, a failing stage ends
the run with one error line, and the served deployment carries its schedule and parameters."""

from __future__ import annotations

import os
import stat

import pytest

import flows.pipeline as fp
from flows.serve import deployment


@pytest.fixture(scope="module")
def prefect_api():
    """A throwaway Prefect API and database for this module's flow runs (started and stopped cleanly)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch, prefect_api):
    """A `dvc` on PATH that logs its arguments and fails for the stage named in FAKE_DVC_FAIL."""
    log = tmp_path / "calls.log"
    script = tmp_path / "bin" / "dvc"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'if [ "$1" = "status" ]; then exit "${FAKE_DVC_STATUS:-1}"; fi\n'
        "echo \"Running stage '$2'\"\n"
        'if [ "$2" = "$FAKE_DVC_FAIL" ]; then echo "boom" >&2; exit 3; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(fp, "dvc_repro", fp.dvc_repro.with_options(retries=0))  # no 30 s retry waits
    return log


def test_flow_runs_each_stage_in_order(fake_dvc):
    assert fp.main(["--stages", "download", "select", "compare"]) == 0
    calls = fake_dvc.read_text().splitlines()
    assert calls == ["status --quiet download select compare", "repro download", "repro select", "repro compare"]


def test_up_to_date_workspace_costs_one_status_check(fake_dvc, monkeypatch):
    monkeypatch.setenv("FAKE_DVC_STATUS", "0")
    assert fp.main(["--stages", "download", "select", "compare"]) == 0
    assert fake_dvc.read_text().splitlines() == ["status --quiet download select compare"]


def test_force_skips_the_status_check(fake_dvc, monkeypatch):
    monkeypatch.setenv("FAKE_DVC_STATUS", "0")
    assert fp.main(["--stages", "compare", "--force"]) == 0
    assert fake_dvc.read_text().splitlines() == ["repro compare --force --single-item"]


def test_failing_stage_stops_the_flow_with_one_error_line(fake_dvc, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DVC_FAIL", "select")
    assert fp.main(["--stages", "download", "select", "compare"]) == 1
    assert fake_dvc.read_text().splitlines()[1:] == ["repro download", "repro select"]  # compare never ran
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["error: dvc repro select failed with exit code 3"]


def test_deployment_passes_stages_and_force():
    d = deployment(name="hourly", cron="0 * * * *", stages=["select", "compare"], force=True)
    assert d.parameters == {"stages": ["select", "compare"], "force": True}


def test_served_deployment_has_schedule_parameters_and_one_run_at_a_time():
    d = deployment(cron="5 4 * * *")
    assert d.name == "nightly"
    assert [s.schedule.cron for s in d.schedules] == ["5 4 * * *"]
    assert d.parameters == {"stages": fp.STAGES, "force": False}
    assert d.concurrency_limit == 1  # DVC holds a workspace lock
    assert d.entrypoint == "flows/pipeline.py:pipeline"
