"""A stop stops everything, and only what may heal is retried.

Fast: a stop of a process group (the signal, a grace, then SIGKILL), the exit codes a stage ends with, and how a
failed command is classified. Server-marked: `python -m flows.pipeline` (its temporary Prefect API included) on a
three-stage DVC workspace whose middle stage sleeps, stopped by SIGTERM (what `timeout`, Kubernetes and Slurm send)
or by Ctrl-C (SIGINT to the whole process group, the temporary API too): it exits 143 / 130 within 30 s, leaves no
process of the run behind, and the next run finishes with `dvc status` clean and the hashes an uninterrupted run
writes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from flows import supervise
from infosift.errors import DataError, TrackingError
from stages._common import EXIT_BAD_INPUT, EXIT_TRANSIENT, StageError, run

ROOT = Path(__file__).resolve().parent.parent
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace():
    """The shell leader and its child both ignore SIGTERM: after the grace, SIGKILL ends the whole group."""
    proc = subprocess.Popen(["sh", "-c", f"trap '' TERM; {sys.executable} -c \"{STUBBORN}\"; sleep 60"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "up"
    start = time.monotonic()
    supervise.stop_group(proc, signal.SIGTERM, grace_s=1.0)
    took = time.monotonic() - start
    assert group_gone(proc.pid) and 1.0 <= took < 5, took


def test_a_group_that_obeys_ends_without_waiting_for_the_grace():
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    time.sleep(0.2)
    start = time.monotonic()
    supervise.stop_group(proc, signal.SIGTERM, grace_s=30.0)
    assert group_gone(proc.pid) and time.monotonic() - start < 5


def test_an_interrupted_stream_leaves_nothing_running(tmp_path):
    """Whatever interrupts the wait (here the line handler; in a run, a signal), the command's group is ended."""
    pids = tmp_path / "pids"

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    cmd = f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; echo started; wait"
    with pytest.raises(KeyboardInterrupt):
        supervise.stream(cmd, tmp_path, dict(os.environ), interrupt)
    for pid in map(int, pids.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


DVC_FAILED = "ERROR: failed to reproduce 'embed': failed to run: python -m stages.embed, exited with {}"


@pytest.mark.parametrize(
    ("code", "output", "transient", "why"),
    [
        (255, DVC_FAILED.format(EXIT_BAD_INPUT), False, "the stage's own error"),
        (255, DVC_FAILED.format(EXIT_TRANSIENT), True, "may heal"),
        (255, DVC_FAILED.format(-9), True, "killed by SIGKILL (out of memory?)"),
        (255, DVC_FAILED.format(143), True, "killed by SIGTERM"),
        (255, DVC_FAILED.format(1), False, "crashed (exit 1)"),
        (255, "ERROR: Unable to acquire lock. Most likely another DVC process is running", True, "workspace lock"),
        (-9, "Running stage 'embed':", True, "dvc was killed by SIGKILL"),
        (255, "ERROR: 'dvc.yaml' is invalid", False, "outside a stage's command"),
    ],
)
def test_classify_says_what_may_heal(code, output, transient, why):
    failure = supervise.classify(code, ["Running stage 'embed':", output])
    assert failure.transient is transient and why in failure.why, failure


def stage_exit(tmp_path, monkeypatch, capsys, error: BaseException) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `run()` around a stage that raises ``error``."""

    def main(argv):
        raise error

    monkeypatch.setattr(sys, "argv", ["stage"])
    with pytest.raises(SystemExit) as e:
        run(main)
    return e.value.code, capsys.readouterr().err.splitlines()


def caused_by(error: Exception, cause: Exception) -> Exception:
    try:
        try:
            raise cause
        except type(cause):
            raise error from None  # the project's way: one line, the cause kept only as context
    except type(error) as e:
        return e


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (StageError("params.yaml x: bad"), EXIT_BAD_INPUT),
        (DataError("pool.jsonl:2: missing field 'answer'"), EXIT_BAD_INPUT),
        (FileNotFoundError(2, "No such file or directory", "data/x"), EXIT_BAD_INPUT),
        (KeyError("budget"), EXIT_BAD_INPUT),
        (ConnectionRefusedError(111, "Connection refused"), EXIT_TRANSIENT),
        (TimeoutError("timed out"), EXIT_TRANSIENT),
        (MemoryError(), EXIT_TRANSIENT),
        (caused_by(TrackingError("MLflow at http://h:5000: unreachable"), ConnectionRefusedError()), EXIT_TRANSIENT),
        (caused_by(TrackingError("MLflow at http://h:5000: bad uri"), ValueError("bad")), EXIT_BAD_INPUT),
    ],
)
def test_a_stage_exits_with_the_code_of_its_kind_of_failure(tmp_path, monkeypatch, capsys, error, code):
    got, err = stage_exit(tmp_path, monkeypatch, capsys, error)
    assert got == code and len(err) == 1 and err[0].startswith("error: "), (got, err)


def test_a_bug_keeps_its_traceback_and_python_exit_code(monkeypatch):
    def main(argv):
        raise RuntimeError("a bug")

    monkeypatch.setattr(sys, "argv", ["stage"])
    with pytest.raises(RuntimeError, match="a bug"):
        run(main)


def test_flow_params_are_checked(tmp_path):
    assert supervise.policy(tmp_path) == supervise.Policy()  # no params.yaml: the defaults
    (tmp_path / "params.yaml").write_text("flow: {retries: 1, retry_delay_s: 0.5, stop_grace_s: 3}\n")
    assert supervise.policy(tmp_path) == supervise.Policy(1, 0.5, 3.0)
    (tmp_path / "params.yaml").write_text("flow: {retry: 1}\n")
    with pytest.raises(StageError, match=r"params.yaml flow.retry: unknown parameter"):
        supervise.policy(tmp_path)


def test_no_dvc_stage_depends_on_the_flow_block():
    """Changing retries or the grace must not make DVC rerun anything."""
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        for dep in stage.get("params") or []:
            keys = dep if isinstance(dep, str) else next(iter(dep.values()), [])
            for key in [keys] if isinstance(keys, str) else keys:
                assert key != "flow" and not str(key).startswith("flow."), name


# -- the flow as a user runs it, stopped by a signal ---------------------------------------------------------------

STEP = """\
import os, signal, sys, time
from pathlib import Path
name, marks = sys.argv[1], Path(os.environ["STEP_MARKS"])
if os.environ.get("STEP_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
(marks / f"started-{name}").write_text(str(os.getpid()))
time.sleep(float(os.environ.get("STEP_SLEEP", "0")) if name == "slow" else 0)
out = Path(f"out/{name}.txt")
out.parent.mkdir(exist_ok=True)
tmp = out.with_name(out.name + ".tmp")  # written aside, renamed when complete
tmp.write_text(name * 3)
tmp.rename(out)
"""
STEPS = ("first", "slow", "last")


def flow_workspace(tmp_path: Path, stages: dict, files: dict[str, str], params: str) -> tuple[Path, dict]:
    """A DVC workspace of ``stages`` with ``files`` and this checkout's flows, under tmp_path; its environment
    (`run_env`)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "flows"), str(repo / "flows")], check=True)
    for name, text in files.items():
        (repo / name).write_text(text)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))  # in the order given
    (repo / "params.yaml").write_text(params)
    assert subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=repo).returncode == 0
    return repo, run_env(tmp_path)


def run_env(tmp_path: Path) -> dict:
    """The environment of a run under test: its marks and Prefect home under tmp_path; every process of the run
    carries STOP_TEST_RUN, so `left_of` finds what is left of it."""
    (tmp_path / "marks").mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),  # the library and stages/_common; `flows` comes from the workspace
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "STEP_MARKS": str(tmp_path / "marks"),
        "STOP_TEST_RUN": uuid.uuid4().hex,  # every process of the run inherits it
        "DVC_NO_ANALYTICS": "1",
    }
    for var in ("PREFECT_API_URL", "PYTEST_CURRENT_TEST"):
        env.pop(var, None)
    return env


@pytest.fixture
def workspace(tmp_path):
    """A DVC workspace of three stages (first -> slow -> last) with this checkout's flows; its environment."""
    stages, before = {}, "step.py"
    for name in STEPS:
        stages[name] = {
            "cmd": f"python step.py {name}",
            "deps": sorted({"step.py", before}),
            "outs": [f"out/{name}.txt"],
        }
        before = f"out/{name}.txt"
    params = "flow: {retries: 2, retry_delay_s: 0, stop_grace_s: 2}\n"
    return flow_workspace(tmp_path, stages, {"step.py": STEP}, params)


def left_of(run_id: str) -> list[str]:
    """The processes still alive that carry the run's marker (the flow, DVC, the stage, the temporary API)."""
    left = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("STOP_TEST_RUN") == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])[:120]}")
        except psutil.Error:
            pass
    return left


def stop_during_slow(
    repo: Path,
    env: dict,
    signals: list[int],
    to_group: bool,
    gap_s: float = 1.0,
    cmd: tuple[str, ...] = ("-m", "flows.pipeline"),
    started: tuple[str, ...] = ("started-slow",),
    stop=None,
):
    """Start the flow (python ``cmd``) in a session of its own, signal it (or its whole group) once the slow stage
    runs (every mark in ``started`` is there), wait for it; the exit code, the seconds from the last signal to the
    exit, and its stderr. ``stop(proc)`` instead of the signals: whatever else ends the run."""
    proc = subprocess.Popen([sys.executable, *cmd], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    marks = [Path(env["STEP_MARKS"]) / name for name in started]
    deadline = time.monotonic() + 400
    while not all(m.exists() for m in marks):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(err)[-3000:]
        time.sleep(0.2)
    time.sleep(0.5)
    if stop is not None:
        stop(proc)
    for i, signum in enumerate(signals):
        if i:
            time.sleep(gap_s)
        os.killpg(proc.pid, signum) if to_group else proc.send_signal(signum)
    sent = time.monotonic()
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - sent
    reader.join(timeout=5)
    return code, took, "".join(err)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def assert_rerun_resumes(repo: Path, env: dict) -> None:
    """The next run finishes; DVC finds nothing to do; dvc.lock holds what an uninterrupted run would write."""
    env = {**env, "STEP_SLEEP": "0"}
    for name in STEPS:
        (Path(env["STEP_MARKS"]) / f"started-{name}").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (Path(env["STEP_MARKS"]) / "started-first").exists()  # finished before the stop: not rerun
    status = subprocess.run(["dvc", "status", "--quiet"], cwd=repo, env=env, capture_output=True, text=True)
    assert status.returncode == 0, status.stdout + status.stderr
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for name in STEPS:
        assert lock[name]["outs"][0]["md5"] == md5(name * 3)


@pytest.mark.server
def test_sigterm_stops_the_stage_group_and_the_next_run_resumes(workspace):
    """SIGTERM to the flow alone, its stage ignoring SIGTERM: the grace (2 s here), then SIGKILL; exit 143."""
    repo, env = workspace
    code, took, err = stop_during_slow(repo, {**env, "STEP_SLEEP": "300", "STEP_IGNORE_TERM": "1"}, [signal.SIGTERM],
                                       to_group=False)  # fmt: skip
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert took < 30, took
    assert left_of(env["STOP_TEST_RUN"]) == []
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    assert not (repo / "out/slow.txt").exists()
    assert_rerun_resumes(repo, env)


@pytest.mark.server
def test_ctrl_c_stops_the_run_even_when_it_takes_the_prefect_api_along(workspace):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the temporary API stops too; the flow still
    exits 130 at once with no traceback and at most one line about the lost API, and nothing is left."""
    repo, env = workspace
    code, took, err = stop_during_slow(repo, {**env, "STEP_SLEEP": "300"}, [signal.SIGINT], to_group=True)
    assert code == 128 + signal.SIGINT, err[-3000:]
    assert took < 30, took
    assert left_of(env["STOP_TEST_RUN"]) == []
    assert "stopped by SIGINT" in err and "Traceback" not in err, err[-3000:]
    about_api = [line for line in err.splitlines() if "API" in line]  # Prefect's "--- Error logging to API ---" too
    assert about_api in ([], ["warning: the Prefect API is gone; the run's last state and logs were not sent to it"]), (
        err[-3000:]
    )
    assert_rerun_resumes(repo, env)


@pytest.mark.server
def test_losing_the_prefect_api_ends_the_run_in_seconds_with_one_line(workspace):
    """The temporary Prefect API's server killed (crashed, out of memory) while a stage runs: the flow does not wait
    on Prefect's retries; it says so in one line naming the server, stops the stage's group, exits 1 at once, and
    the next run resumes."""
    repo, env = workspace

    def kill_the_api(flow: subprocess.Popen) -> None:
        servers = [p for p in psutil.Process(flow.pid).children() if "uvicorn" in " ".join(p.cmdline())]
        assert len(servers) == 1, [p.cmdline() for p in psutil.Process(flow.pid).children()]
        servers[0].kill()

    code, took, err = stop_during_slow(repo, {**env, "STEP_SLEEP": "300"}, [], to_group=False, stop=kill_the_api)
    assert code == 1, err[-3000:]
    assert took < 20, took
    assert left_of(env["STOP_TEST_RUN"]) == []
    about_api = [line for line in err.splitlines() if "API" in line]
    assert len(about_api) == 1 and about_api[0].startswith("error: the Prefect API at http://127.0.0.1:"), err[-3000:]
    assert "killed by SIGKILL" in about_api[0] and "Traceback" not in err, err[-3000:]
    assert not (repo / "out/slow.txt").exists()
    assert_rerun_resumes(repo, env)


@pytest.mark.server
def test_a_second_signal_ends_the_grace(workspace):
    """With a 60 s grace and a stage that ignores SIGTERM, a second SIGTERM ends the run at once, leaving nothing."""
    repo, env = workspace
    (repo / "params.yaml").write_text("flow: {retries: 2, retry_delay_s: 0, stop_grace_s: 60}\n")
    env = {**env, "STEP_SLEEP": "300", "STEP_IGNORE_TERM": "1"}
    code, took, err = stop_during_slow(repo, env, [signal.SIGTERM, signal.SIGTERM], to_group=False)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert took < 10, took
    assert left_of(env["STOP_TEST_RUN"]) == []


FAKE_EXP = """\
import sys
from pathlib import Path
tries = Path(sys.argv[1])
tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
if len(tries.read_text()) <= int(sys.argv[3]):
    print("ERROR: failed to reproduce 'finetune': failed to run: python -m stages.finetune, exited with " + sys.argv[2])
    sys.exit(255)
"""


@pytest.mark.parametrize(
    ("stage_code", "fails", "runs", "ok"),
    [("-9", 1, 2, True), ("-9", 5, 3, False), (str(EXIT_BAD_INPUT), 1, 1, False)],
)
def test_evidence_retries_only_what_may_heal(tmp_path, capsys, stage_code, fails, runs, ok):
    """The evidence run's `dvc exp run` (here a stand-in that fails ``fails`` times as DVC reports a stage's exit):
    a kill is retried up to flow.retries (2), a stage's own error is not."""
    from flows.evidence import run_retrying

    tries, script = tmp_path / "tries", tmp_path / "exp.py"
    script.write_text(FAKE_EXP)
    cmd = [sys.executable, str(script), str(tries), stage_code, str(fails)]
    policy = supervise.Policy(retries=2, retry_delay_s=0, stop_grace_s=1)
    if ok:
        run_retrying(cmd, "the pool's experiment", policy)
    else:
        with pytest.raises(SystemExit, match="error: the pool's experiment failed"):
            run_retrying(cmd, "the pool's experiment", policy)
    assert len(tries.read_text()) == runs
    assert capsys.readouterr().out.count("may heal, retry") == (runs - 1)


EVIDENCE_DRIVER = """\
import sys
import flows.evidence as ev
from flows import supervise

ev.check_config_or_exit = lambda *a, **k: None  # the stand-in reads no config
supervise.policy = lambda root: supervise.Policy(retries=2, retry_delay_s=0, stop_grace_s=2)
sys.exit(ev.main(["--pools", "clean"]))
"""
SLOW_EXP = f"""\
#!/bin/sh
{sys.executable} -c "{STUBBORN.replace("print('up', flush=True)", "open('$STEP_MARKS/started-slow', 'w').close()")}"
sleep 300
"""


@pytest.mark.server
def test_sigterm_stops_the_evidence_run_and_its_experiment(tmp_path):
    """flows.evidence, its `dvc exp run` a stand-in (a shell and a child that ignores SIGTERM, on PATH as `dvc`):
    SIGTERM to the run stops the experiment's whole group (the grace, 2 s here, then SIGKILL) and exits 143 within
    30 s, leaving nothing."""
    env = run_env(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/dvc").write_text(SLOW_EXP)
    (tmp_path / "bin/dvc").chmod(0o755)
    (tmp_path / "driver.py").write_text(EVIDENCE_DRIVER)
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    code, took, err = stop_during_slow(tmp_path, env, [signal.SIGTERM], to_group=False, cmd=("driver.py",))
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert 2 <= took < 30, took  # the child ignored SIGTERM: it took the grace and SIGKILL
    assert left_of(env["STOP_TEST_RUN"]) == []
    assert "evidence: stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
