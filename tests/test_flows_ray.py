"""Variants in parallel on a local Ray cluster the test starts (2 CPUs): two matrix items run at once, DVC records
both in dvc.lock, `dvc status` is clean afterwards and a second run runs nothing.

The workspace is a minimal DVC repo of the real pipeline's shape (select -> finetune@{a,b} -> compare) whose
finetune command sleeps 3 s and logs when it started and ended: the fan-out logic is the same for any command,
and a real fine-tune would cost minutes here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import flows.pipeline as fp

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
