"""Prefect orchestration: the flow runs one `dvc repro <stage>` per stage in order, a failing stage ends
the run with one error line, runs are named by commit and params, compare's outputs become artifacts, an
unreachable API is one error line, and the served deployment is the one prefect.yaml declares."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

import flows.pipeline as fp
from flows.serve import declared, deployment
from infosift.hashing import file_sha256
from stages._common import EXIT_BAD_INPUT, EXIT_TRANSIENT


@pytest.fixture(scope="module")
def prefect_api():
    """A throwaway Prefect API and database for this module's flow runs (started and stopped cleanly)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):  # 30 s by default: too short on a busy machine
        yield


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch, prefect_api):
    """A `dvc` on PATH that logs its arguments and fails for the stage named in FAKE_DVC_FAIL (as DVC reports a
    stage command's exit code FAKE_DVC_EXIT, if set); the flow's workspace is tmp_path (no compare outputs unless
    a test writes them), retrying twice without delay."""
    log = tmp_path / "calls.log"
    script = tmp_path / "bin" / "dvc"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'if [ "$1" = "status" ]; then echo "${FAKE_DVC_STATUS_JSON:-}"; exit "${FAKE_DVC_STATUS:-1}"; fi\n'
        "echo \"Running stage '$2'\"\n"
        'if [ "$2" = "$FAKE_DVC_FAIL" ] && [ -n "$FAKE_DVC_EXIT" ]; then\n'
        "  echo \"ERROR: failed to reproduce '$2': failed to run: python -m stages.$2, exited with $FAKE_DVC_EXIT\"\n"
        "  exit 255\n"
        "fi\n"
        'if [ "$2" = "$FAKE_DVC_FAIL" ]; then echo "boom" >&2; exit 3; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    # no MLflow: with a Ray address a SQLite store is refused (a server is the way), not what these tests check
    (tmp_path / "params.yaml").write_text("flow: {retries: 2, retry_delay_s: 0}\ncompare: {mlflow: false}\n")
    monkeypatch.setattr(fp, "ROOT", tmp_path)
    monkeypatch.setattr(fp, "check_config", lambda *a, **k: None)  # the real config's checks: tests/test_own_data.py
    return log


def test_flow_runs_each_stage_in_order(fake_dvc):
    assert fp.main(["--stages", "download", "select", "compare"]) == 0
    calls = fake_dvc.read_text().splitlines()
    assert calls == ["status --json --with-deps download select compare", "repro download", "repro select",
                     "repro compare"]  # fmt: skip


def test_up_to_date_workspace_costs_one_status_check(fake_dvc, monkeypatch):
    monkeypatch.setenv("FAKE_DVC_STATUS", "0")
    assert fp.main(["--stages", "download", "select", "compare"]) == 0
    assert fake_dvc.read_text().splitlines() == ["status --json --with-deps download select compare"]


def test_the_sources_a_run_reaches_are_looked_at_first(fake_dvc, monkeypatch, tmp_path):
    """Only compare asked for: the fetch items DVC lists upstream of it run first (a dataset edited in place is
    seen), then one more status decides; sketch's fetch, not reached, is not run."""
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "fetch": {"cmd": "x", "always_changed": True}, "fetch_mt_bench": {"cmd": "x", "always_changed": True},
        "compare": {"cmd": "x"}}}))  # fmt: skip
    monkeypatch.setenv("FAKE_DVC_STATUS", "0")
    listed = {"fetch": ["always changed"], "fetch_mt_bench@evaluate": ["always changed"], "download": ["changed"]}
    monkeypatch.setenv("FAKE_DVC_STATUS_JSON", json.dumps(listed))
    assert fp.main(["--stages", "compare"]) == 0
    assert fake_dvc.read_text().splitlines() == [
        "status --json --with-deps compare", "repro fetch", "repro fetch_mt_bench@evaluate",
        "status --json --with-deps compare", "repro compare"]  # fmt: skip


def test_force_skips_the_status_check(fake_dvc, monkeypatch):
    monkeypatch.setenv("FAKE_DVC_STATUS", "0")
    assert fp.main(["--stages", "compare", "--force"]) == 0
    assert fake_dvc.read_text().splitlines() == ["repro compare --force --single-item"]


def test_failing_stage_stops_the_flow_with_one_error_line(fake_dvc, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DVC_FAIL", "select")
    assert fp.main(["--stages", "download", "select", "compare"]) == 1
    assert fake_dvc.read_text().splitlines()[1:] == ["repro download", "repro select"]  # compare never ran
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["error: dvc repro select failed with exit code 3: dvc failed (exit 3) before or outside a "
                      "stage's command"]  # fmt: skip


def test_a_stages_own_error_is_not_retried(fake_dvc, monkeypatch, caplog):
    """Exit EXIT_BAD_INPUT (the stage printed its `error:` line): the same input fails again, so one attempt."""
    monkeypatch.setenv("FAKE_DVC_FAIL", "select")
    monkeypatch.setenv("FAKE_DVC_EXIT", str(EXIT_BAD_INPUT))
    assert fp.main(["--stages", "download", "select", "compare"]) == 1
    assert fake_dvc.read_text().splitlines()[1:] == ["repro download", "repro select"]
    assert "dvc repro select: the stage's own error (bad params, data or files)" in caplog.text
    assert "; not retried" in caplog.text


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("-15", "killed by SIGTERM"),
        ("137", "killed by SIGKILL (out of memory?)"),
        (str(EXIT_TRANSIENT), "(network, timeout, memory)"),
    ],
)
def test_a_failure_that_may_heal_is_retried(fake_dvc, monkeypatch, capsys, caplog, code, why):
    """Killed by a signal, or the stage's EXIT_TRANSIENT: retried params.yaml flow.retries times (2), then the
    error; the stages after it never run."""
    monkeypatch.setenv("FAKE_DVC_FAIL", "select")
    monkeypatch.setenv("FAKE_DVC_EXIT", code)
    assert fp.main(["--stages", "download", "select", "compare"]) == 1
    assert fake_dvc.read_text().splitlines()[1:] == ["repro download"] + ["repro select"] * 3
    assert caplog.text.count(f"{why}; may heal, retried while retries remain") == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: dvc repro select failed with exit code 255: ")
    assert why in errors[0]


def test_a_stop_while_waiting_to_retry_ends_the_run_at_once(fake_dvc, monkeypatch, tmp_path, capsys):
    """SIGTERM during the 30 s wait before a retry: exit 143 in seconds, the retry never runs."""
    import signal
    import threading

    (tmp_path / "params.yaml").write_text("flow: {retries: 2, retry_delay_s: 30}\n")
    monkeypatch.setenv("FAKE_DVC_FAIL", "select")
    monkeypatch.setenv("FAKE_DVC_EXIT", "-9")

    def stop_once_select_failed():
        deadline = time.monotonic() + 120
        while "repro select" not in (fake_dvc.read_text() if fake_dvc.exists() else ""):
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        time.sleep(1)  # into the retry's wait
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=stop_once_select_failed, daemon=True)
    killer.start()
    start = time.monotonic()
    assert fp.main(["--stages", "select", "compare"]) == 128 + signal.SIGTERM
    assert time.monotonic() - start < 25
    assert fake_dvc.read_text().splitlines()[1:] == ["repro select"]
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is given back


def test_retries_come_from_params(fake_dvc, monkeypatch, tmp_path):
    (tmp_path / "params.yaml").write_text("flow: {retries: 0, retry_delay_s: 0}\n")
    monkeypatch.setenv("FAKE_DVC_FAIL", "select")
    monkeypatch.setenv("FAKE_DVC_EXIT", "-9")
    assert fp.main(["--stages", "select"]) == 1
    assert fake_dvc.read_text().splitlines()[1:] == ["repro select"]


def test_bad_flow_params_are_one_error_line(fake_dvc, tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("flow: {retries: -1}\n")
    assert fp.main(["--stages", "select"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["error: params.yaml flow.retries: must be >= 0, got -1"]
    assert not fake_dvc.exists()  # nothing ran


def test_a_field_the_data_lacks_fails_at_once_with_the_stages_error_line(tmp_path, monkeypatch, caplog, capsys,
                                                                          prefect_api):  # fmt: skip
    """The real download stage under real DVC, told to read a column the data does not have: its `error:` line,
    exit EXIT_BAD_INPUT, one attempt in seconds although params.yaml allows 2 retries 30 s apart."""
    from tests.test_e2e import TINY_PARAMS
    from tests.tiny import gsm_rows, write_jsonl

    repo = tmp_path / "repo"
    for item in ("stages", "infosift"):
        shutil.copytree(fp.ROOT / item, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((fp.ROOT / "dvc.yaml").read_text())["stages"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: stages[s] for s in ("fetch", "download")}}))
    write_jsonl(tmp_path / "mirror/gsm8k/train.jsonl", gsm_rows(30, seed=0))
    write_jsonl(tmp_path / "mirror/gsm8k/test.jsonl", gsm_rows(10, seed=1))
    params = {
        "download": {**TINY_PARAMS["download"], "mirror_dir": str(tmp_path / "mirror"), "pool_size": 10,
                     "target_size": 4, "test_size": 4, "fields": {"prompt": "instruction", "response": "answer"}},
        "flow": {"retries": 2, "retry_delay_s": 30},
    }  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=repo).returncode == 0
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # DVC's `python`
    monkeypatch.setattr(fp, "ROOT", repo)
    start = time.monotonic()
    assert fp.main(["--stages", "fetch", "download"]) == 1
    assert time.monotonic() - start < 30  # no retry waited its 30 s
    stage_errors = [m for m in caplog.messages if m.startswith("error: ")]
    assert len(stage_errors) == 1 and "instruction" in stage_errors[0], caplog.messages  # the stage's own line
    assert sum(m.startswith("Running stage 'download'") for m in caplog.messages) == 1
    assert f"exited with {EXIT_BAD_INPUT}" in caplog.text and "; not retried" in caplog.text
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the stage's own error" in errors[0]
    assert not (repo / "data/download").exists()


def test_ray_path_fans_out_finetune_and_evaluate_of_the_real_dvc_yaml(fake_dvc, monkeypatch):
    """With a Ray address, the stages of dvc.yaml run in its order; only finetune and evaluate fan out."""
    import flows.parallel as par

    fanned = []
    monkeypatch.setattr(par, "fan_out", lambda group, address, **kw: fanned.append((group, address, kw)))
    monkeypatch.setattr("infosift.scale.cluster.check_address", lambda address: None)  # no cluster needed here
    assert fp.main(["--ray-address", "ray://head:10001", "--gpus-per-item", "1", "--stages", *fp.STAGES]) == 0
    repro = [c.split()[1] for c in fake_dvc.read_text().splitlines()[1:]]
    assert [g for g, *_ in fanned] == ["finetune", "evaluate"]
    assert fanned[0][1] == "ray://head:10001" and fanned[0][2]["gpus"] == 1
    assert repro == [s for s in fp.STAGES if s not in par.PARALLEL_STAGES]


def test_unreachable_ray_address_is_one_error_line_before_any_stage(fake_dvc, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert fp.main(["--ray-address", f"127.0.0.1:{port}", "--stages", "download"]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot reach Ray at 127.0.0.1:{port}: "), errors
    assert not fake_dvc.exists()  # no dvc command ran


def test_parallel_items_come_from_dvc_as_declared():
    """Each fan-out group is a matrix stage of the real dvc.yaml; its items and commands are DVC's, not a copy."""
    import flows.parallel as par

    spec = yaml.safe_load((fp.ROOT / "dvc.yaml").read_text())["stages"]
    listed = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=fp.ROOT, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    for group in par.PARALLEL_STAGES:
        assert "matrix" in spec[group], f"{group} is not a matrix stage in dvc.yaml"
        items = par.matrix_items(group)
        assert [i["name"] for i in items] == [n for n in listed.stdout.split() if n.startswith(f"{group}@")]
        for item in items:
            assert "${" not in item["cmd"] and item["cmd"].startswith(spec[group]["cmd"].split("${")[0])
            assert item["outs"] and all(str(fp.ROOT) in o for o in item["outs"])


def test_run_name_carries_commit_and_params_hash(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)  # fmt: skip

    monkeypatch.setattr(fp, "ROOT", tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("a: 1\n")
    git("init", "-q")
    git("add", "params.yaml")
    git("commit", "-qm", "one")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True)
    assert fp.run_name() == f"pipeline-{commit.stdout.strip()}-{file_sha256(params)[:8]}"
    params.write_text("a: 2\n")  # uncommitted params: a different hash, and the commit is marked dirty
    assert fp.run_name() == f"pipeline-{commit.stdout.strip()}-dirty-{file_sha256(params)[:8]}"


def test_compare_outputs_become_artifacts_of_the_flow_run(fake_dvc, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    out = tmp_path / fp.COMPARE_DIR
    out.mkdir(parents=True)
    (out / "table.md").write_text("| selector | nll |\n|---|---|\n| random | 1.2 |\n")
    (out / "evidence.md").write_text("# Evidence\n- fishersft: beats random (95 %)\n")
    (out / "evidence.csv").write_text(
        "loss,selector,budget,diff,verdict\nnll,random,3300,,reference\nnll,fishersft,3300,-0.0123456,beats random\n"
    )
    state = fp.pipeline(stages=["compare"], return_state=True)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        run = client.read_flow_run(run_id)
    assert run.name == fp.run_name()  # the flow-run name callable is what names the run
    by_key = {a.key: a for a in arts}
    assert set(by_key) == {"compare-table", "selection-evidence", "selection-verdicts"}
    assert by_key["compare-table"].data == (out / "table.md").read_text()
    assert by_key["selection-evidence"].data == (out / "evidence.md").read_text()
    rows = json.loads(by_key["selection-verdicts"].data)
    with (out / "evidence.csv").open() as f:
        expected = list(csv.DictReader(f))
    assert [r["verdict"] for r in rows] == [r["verdict"] for r in expected]
    assert [r["diff"] for r in rows] == [None, -0.01235]  # 4 significant digits


def test_compare_outputs_match_the_compare_stage_outs():
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in yaml.safe_load((fp.ROOT / "dvc.yaml").read_text())
            ["stages"]["compare"]["outs"]]  # fmt: skip
    for name in [*fp.COMPARE_MARKDOWN.values(), fp.COMPARE_VERDICTS]:
        assert str(fp.COMPARE_DIR / name) in outs


@pytest.mark.parametrize("module", ["flows.pipeline", "flows.serve"])
def test_unreachable_prefect_api_is_one_error_line(module, tmp_path):
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", module], cwd=fp.ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: PREFECT_API_URL {url}: cannot reach the Prefect API (")


def test_served_deployment_is_the_one_prefect_yaml_declares():
    spec = declared("nightly")
    d = deployment()
    assert d.name == spec["name"]
    assert [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] == [
        (s["cron"], s["timezone"]) for s in spec["schedules"]
    ]
    assert d.parameters == spec["parameters"]
    assert d.concurrency_limit == spec["concurrency_limit"] == 1  # DVC holds a workspace lock
    assert d.entrypoint == spec["entrypoint"] == "flows/pipeline.py:pipeline"
    assert set(spec["parameters"]) <= set(fp.pipeline.parameters.properties)  # every declared parameter exists


def test_serve_overrides_schedule_stages_and_force():
    d = deployment(cron="0 * * * *", stages=["select", "compare"], force=True)
    assert [s.schedule.cron for s in d.schedules] == ["0 * * * *"]
    assert d.parameters["stages"] == ["select", "compare"] and d.parameters["force"] is True


PARALLEL_FINETUNE = """\
import os, signal, sys
from pathlib import Path
variant, log = sys.argv[1], sys.argv[2]
with open(log, "a") as f:
    f.write(variant + "\\n")
fail = Path(f"fail-{variant}")  # "CODE [N]": fail with CODE (kill: SIGKILL) on the first N runs (all if no N)
if fail.exists():
    code, times = (fail.read_text().split() + ["2", "1000"])[:2] if fail.read_text().strip() else ("2", "1000")
    if Path(log).read_text().split().count(variant) <= int(times):
        os.kill(os.getpid(), signal.SIGKILL) if code == "kill" else sys.exit(int(code))
Path("models").mkdir(exist_ok=True)
Path(f"models/{variant}.txt").write_text(variant)
"""

PARALLEL_DVC_YAML = """\
stages:
  finetune:
    matrix:
      variant: [a, b, c]
    cmd: {py} finetune.py ${{item.variant}} {log}
    deps: [finetune.py]
    outs: ["models/${{item.variant}}.txt"]
"""


@pytest.fixture
def workspace(tmp_path, monkeypatch, prefect_api):
    """A DVC repo with one matrix stage of three items; the Ray call runs the items in this process instead."""
    import flows.parallel as par

    repo, log = tmp_path / "repo", tmp_path / "runs.log"
    repo.mkdir()
    (repo / "finetune.py").write_text(PARALLEL_FINETUNE)
    (repo / "dvc.yaml").write_text(PARALLEL_DVC_YAML.format(py=sys.executable, log=log))
    assert subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=repo).returncode == 0
    monkeypatch.setattr(fp, "ROOT", repo)
    monkeypatch.setattr(fp, "check_config", lambda *a, **k: None)  # this repo has no params.yaml to check

    def run_here(group, items, address, cpus, gpus, env=None, policy=None, root=None):
        """run_on_ray's subflow with Prefect's thread pool (one item at a time) in place of Ray."""
        from prefect.task_runners import ThreadPoolTaskRunner

        runner = ThreadPoolTaskRunner(max_workers=1)
        record = str(par.record_dir(root))
        return par.ray_items.with_options(task_runner=runner)(group, items, "", cpus, gpus, {}, policy, record)

    monkeypatch.setattr(par, "run_on_ray", run_here)
    # Ray's per-task options mean nothing to the thread pool; the default install has no prefect-ray (an extra)
    options = types.ModuleType("prefect_ray.context")
    options.remote_options = lambda **kw: contextlib.nullcontext()
    monkeypatch.setitem(sys.modules, "prefect_ray.context", options)
    return repo, log


def test_failed_item_is_not_committed_and_only_it_reruns(workspace, capsys):
    """The fan-out around Ray with real DVC, the Ray call replaced by running the items here one by one: only
    out-of-date items run, finished ones are committed even when another fails, and the next run reruns only what
    failed. (Concurrency on a real cluster: test_flows_ray.py.)"""
    repo, log = workspace
    (repo / "fail-c").touch()
    (repo / "models").mkdir()
    (repo / "models/c.txt").write_text("stale")  # an earlier output: removed before c runs, as dvc repro does
    assert fp.main(["--ray-address", "auto"]) == 1
    assert not (repo / "models/c.txt").exists()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["error: finetune@c failed with exit code 2: the stage crashed (exit 2): a bug a rerun repeats"]
    status = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True).stdout
    assert "finetune@c" in status and "finetune@a" not in status and "finetune@b" not in status

    (repo / "fail-c").unlink()
    assert fp.main(["--ray-address", "auto"]) == 0
    assert log.read_text().split() == ["a", "b", "c", "c"]  # the second run ran c alone
    assert subprocess.run(["dvc", "status", "--quiet"], cwd=repo).returncode == 0


RETRIED = "; may heal, retried while retries remain"


@pytest.mark.parametrize(
    ("fail", "runs", "code", "logged"),
    [  # (what fail-c says, runs of c, the flow's exit code, the line logged per failed run)
        ("kill 1", 2, 0, "the stage was killed by SIGKILL (out of memory?)" + RETRIED),
        (f"{EXIT_TRANSIENT} 3", 3, 1, "the stage reported a failure that may heal (network, timeout, memory)"
                                      + RETRIED),
        (f"{EXIT_BAD_INPUT} 1", 1, 1, "the stage's own error (bad params, data or files): it fails the same way again"
                                      "; not retried"),
    ],
)  # fmt: skip
def test_an_item_is_retried_only_when_its_failure_may_heal(workspace, caplog, fail, runs, code, logged):
    """As a serial stage is: killed (out of memory?) or EXIT_TRANSIENT, retried up to flow.retries (2) times;
    the stage's own error (EXIT_BAD_INPUT) runs once. The log says which and why."""
    repo, log = workspace
    (repo / "params.yaml").write_text("flow: {retries: 2, retry_delay_s: 0}\ncompare: {mlflow: false}\n")
    (repo / "fail-c").write_text(fail)
    assert fp.main(["--ray-address", "auto"]) == code
    assert log.read_text().split().count("c") == runs
    failures = runs if code else runs - 1
    assert caplog.text.count(f"finetune@c: {logged}") == failures, caplog.text[-3000:]
    assert (subprocess.run(["dvc", "status", "--quiet"], cwd=repo).returncode == 0) == (code == 0)


def test_checking_the_config_leaves_the_stages_thread_settings_alone():
    """The preflight imports stage modules; synthetic's one-thread setting must not leak into the flow's environment,
    whence every stage (embed, finetune, evaluate) would inherit it and run on one core."""
    import subprocess
    import sys

    code = ("import os, flows.preflight, stages.synthetic; "
            "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('MKL_NUM_THREADS'))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=fp.ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["None", "None"], out.stderr
