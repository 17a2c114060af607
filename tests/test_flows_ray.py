"""Variants in parallel on a local Ray cluster the test starts (2 CPUs): two matrix items run at once, DVC records
both in dvc.lock, `dvc status` is clean afterwards and a second run runs nothing. A stop (SIGTERM to the flow,
Ctrl-C to its group) while the items run ends every item's process group, the flow's Ray cluster and its Prefect
API, exits 143 / 130 within 30 s, and the next run completes.

The workspace is a minimal DVC repo of the real pipeline's shape (select -> finetune@{a,b} -> compare) whose
finetune command sleeps 3 s and logs when it started and ended: the fan-out logic is the same for any command,
and a real fine-tune would cost minutes here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import yaml

import flows.pipeline as fp
from tests.test_flows_stop import flow_workspace, left_of, md5, stop_during_slow

pytestmark = pytest.mark.server

FINETUNE = """\
import sys, time
from pathlib import Path
variant, log = sys.argv[1], sys.argv[2]
start = time.time()
time.sleep(3)
Path("models").mkdir(exist_ok=True)
Path(f"models/{variant}.txt").write_text(Path("data/select.txt").read_text() + variant)
with open(log, "a") as f:
    f.write(f"{variant} {start} {time.time()}\\n")
"""

DVC_YAML = """\
stages:
  select:
    cmd: {py} -c "import pathlib; pathlib.Path('data').mkdir(); pathlib.Path('data/select.txt').write_text('s')"
    outs: [data/select.txt]
  finetune:
    matrix:
      variant: [a, b]
    cmd: {py} finetune.py ${{item.variant}} {log}
    deps: [finetune.py, data/select.txt]
    outs: ["models/${{item.variant}}.txt"]
  compare:
    cmd: {py} -c "import pathlib; pathlib.Path('results/compare').mkdir(parents=True); pathlib.Path('results/compare/table.md').write_text('ok')"
    deps: [models]
    outs: [results/compare/table.md]
"""  # noqa: E501


def _dvc(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True)


def test_two_matrix_items_run_at_once_and_dvc_records_them(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    pytest.importorskip("prefect_ray")
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    repo, log = tmp_path / "repo", tmp_path / "runs.log"
    repo.mkdir()
    (repo / "finetune.py").write_text(FINETUNE)
    (repo / "dvc.yaml").write_text(DVC_YAML.format(py=sys.executable, log=log))
    assert _dvc("init", "--no-scm", "-q", cwd=repo).returncode == 0
    monkeypatch.setattr(fp, "ROOT", repo)

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        with prefect_test_harness():
            assert fp.main(["--ray-address", "auto"]) == 0
            runs = [line.split() for line in log.read_text().splitlines()]
            assert sorted(r[0] for r in runs) == ["a", "b"]
            (_, s1, e1), (_, s2, e2) = [(v, float(s), float(e)) for v, s, e in runs]
            assert max(s1, s2) < min(e1, e2), f"items ran one after the other: {runs}"

            assert _dvc("status", "--quiet", cwd=repo).returncode == 0  # dvc.lock records everything
            lock = (repo / "dvc.lock").read_text()
            assert "finetune@a:" in lock and "finetune@b:" in lock and "compare:" in lock
            assert (repo / "results/compare/table.md").read_text() == "ok"

            with get_client(sync_client=True) as client:  # the Ray workers reported to this API, not their own
                states = {t.name: t.state_type.value for t in client.read_task_runs() if t.name.startswith("finetune@")}
            assert states == {"finetune@a": "COMPLETED", "finetune@b": "COMPLETED"}

            assert fp.main(["--ray-address", "auto"]) == 0  # a second run finds nothing to do
            assert len(log.read_text().splitlines()) == 2
    finally:
        ray.shutdown()


STUBBORN_ITEM = """\
import os, signal, sys, time
from pathlib import Path
variant = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the worst case: only the grace's SIGKILL ends it
(Path(os.environ["STEP_MARKS"]) / f"started-{variant}").write_text(str(os.getpid()))
time.sleep(float(os.environ.get("STEP_SLEEP", "0")))
out = Path(f"models/{variant}.txt")
out.parent.mkdir(exist_ok=True)
tmp = out.with_name(out.name + ".tmp")  # written aside, renamed when complete
tmp.write_text("m" + variant)
tmp.rename(out)
"""
PREP = "import pathlib; pathlib.Path('data').mkdir(exist_ok=True); pathlib.Path('data/p.txt').write_text('p')"


@pytest.mark.parametrize(("signum", "to_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_stop_during_the_fan_out_ends_every_item_and_the_next_run_completes(tmp_path, signum, to_group):
    """`python -m flows.pipeline --ray-address auto` (its own local Ray cluster and temporary Prefect API), both
    finetune items running on Ray and ignoring SIGTERM: SIGTERM to the flow, or SIGINT to its group as a terminal's
    Ctrl-C, ends within 30 s with 128 + the signal, no traceback, and nothing of the run left (item, Ray worker,
    raylet, Prefect server); the next run finishes both items and `dvc status` is clean."""
    pytest.importorskip("ray")
    pytest.importorskip("prefect_ray")
    stages = {
        "prep": {"cmd": f'python -c "{PREP}"', "outs": ["data/p.txt"]},
        "finetune": {
            "matrix": {"variant": ["a", "b"]},
            "cmd": "python item.py ${item.variant}",
            "deps": ["item.py", "data/p.txt"],
            "outs": ["models/${item.variant}.txt"],
        },
    }
    params = "flow: {retries: 2, retry_delay_s: 0, stop_grace_s: 2}\ncompare: {mlflow: false}\n"
    repo, env = flow_workspace(tmp_path, stages, {"item.py": STUBBORN_ITEM}, params)
    with (repo / "flows/preflight.py").open("a") as f:  # the stand-in finetune has none of the real one's params
        f.write('\nCHECKS.pop("finetune", None)\n')
    env = {**env, "STEP_SLEEP": "300", "RAY_DISABLE_USAGE_STATS": "1"}
    cmd = ("-m", "flows.pipeline", "--ray-address", "auto")

    code, took, err = stop_during_slow(repo, env, [signum], to_group, cmd=cmd, started=("started-a", "started-b"))
    assert code == 128 + signum, err[-3000:]
    assert took < 30, took
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err, err[-3000:]
    deadline = time.monotonic() + 10  # Ray's own processes end with their driver, not before it
    while (left := left_of(env["STOP_TEST_RUN"])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []
    assert not (repo / "models/a.txt").exists() and not (repo / "models/b.txt").exists()

    rerun = subprocess.run([sys.executable, *cmd], cwd=repo, env={**env, "STEP_SLEEP": "0"}, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert _dvc("status", "--quiet", cwd=repo).returncode == 0
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert [lock[f"finetune@{v}"]["outs"][0]["md5"] for v in "ab"] == [md5("ma"), md5("mb")]
    assert left_of(env["STOP_TEST_RUN"]) == []
