"""Writes that survive a crash: each stage is killed with SIGKILL at the worst moment (its output written and
fsynced, the rename not yet made), then rerun; what it leaves must equal what an uninterrupted run wrote, with no
temporary left beside it.

The kill comes from inside the stage's process (a wrapper patches infosift.atomic._commit to SIGKILL itself on its
first call), so it lands at that exact point every time instead of racing a timer. Slow: the tiny model runs every
stage three times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_e2e import write_mirror
from tests.tiny import save_tiny_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
KILL_AT_COMMIT = """
import os, runpy, signal, sys
import infosift.atomic as atomic
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
atomic._commit = die
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""
# stage, its arguments, the outputs it writes (compared), in pipeline order
STAGES = [
    ("stages.download", [], ["data/download"]),
    ("stages.embed", [], ["data/features"]),
    ("stages.select", ["random", "200"], ["results/select/random-200"]),
    (
        "stages.finetune",
        ["random", "200", "0", "nll"],
        ["models/random-200-s0-nll", "results/finetune/random-200-s0-nll"],
    ),
    ("stages.evaluate", ["random-200-s0-nll"], ["results/evaluate/random-200-s0-nll"]),
    ("stages.evaluate", ["base"], ["results/evaluate/base"]),
    ("stages.compare", [], ["results/compare"]),
]
TIMING_KEYS = {"seconds", "wall_seconds", "timings", "elapsed", "created", "time", "duration_s"}


def params(mirror: Path, model: Path) -> dict:
    return {
        "model": {"base_model": str(model), "cache_dir": ".cache/models", "trust_remote_code": False},
        "download": {"dataset": "gsm8k", "mirror_dir": str(mirror), "hub_cache": ".cache/datasets", "pool_size": 30,
                     "target_size": 5, "test_size": 6, "seed": 0},
        "embed": {"part": "response", "max_length": 48, "batch_tokens": 256, "shard_size": 8, "dtype": "float16"},
        "select": {"run": ["random"], "budget_unit": "tokens", "budgets": [200], "seeds": [0],
                   "variants": {"random": {"selector": "random"}}},
        "finetune": {"losses": ["nll"], "max_length": 48,
                     "train": {"learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 3}},
        "evaluate": {"n_test": 4, "max_length": 48, "batch_size": 4, "gsm8k": {"limit": 0},
                     "mt_bench": {"limit": 0}},
        "compare": {"bootstrap": 100, "mlflow": False},
    }  # fmt: skip


def stage(cwd: Path, module: str, args: list[str], kill: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-c", KILL_AT_COMMIT, module, *args] if kill else [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def normalized(path: Path) -> dict[str, object]:
    """relative path -> content, JSON with timing fields dropped (a rerun takes other seconds), bytes otherwise."""

    def strip(x: object) -> object:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING_KEYS and not k.endswith("_s")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    out: dict[str, object] = {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        rel = str(f.relative_to(path.parent))
        if f.suffix == ".json":
            out[rel] = strip(json.loads(f.read_text()))
        elif f.suffix == ".png":  # matplotlib embeds nothing variable, but font caching can differ: size suffices
            out[rel] = f.stat().st_size > 0
        else:
            out[rel] = f.read_bytes()
    return out


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*-*") if p.name.startswith((".tmp-", ".old-")))


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill9")
    mirror = write_mirror(tmp / "mirror", n_train=40, n_test=8)
    model = save_tiny_model(tmp / "tiny-model")
    clean, killed = tmp / "clean", tmp / "killed"
    for ws in (clean, killed):
        ws.mkdir()
        (ws / "params.yaml").write_text(yaml.safe_dump(params(mirror, model)))
    return clean, killed


@pytest.mark.parametrize(
    ("module", "args", "outs"), STAGES, ids=[f"{m[7:]}-{'-'.join(a) or 'all'}" for m, a, _ in STAGES]
)
def test_a_stage_killed_at_its_commit_reruns_to_the_same_outputs(workspaces, module, args, outs):
    """Runs in pipeline order (each case feeds the next); both workspaces hold the same inputs when a case starts."""
    clean, killed = workspaces
    done = stage(clean, module, args)
    assert done.returncode == 0, done.stderr[-3000:]

    crashed = stage(killed, module, args, kill=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    finished = killed / ("data/features/pool" if module == "stages.embed" else outs[0])  # embed commits shards first
    assert not finished.exists()  # nothing that looks finished

    rerun = stage(killed, module, args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for o in outs:
        assert normalized(killed / o) == normalized(clean / o), o
    assert leftovers(killed) == []  # the killed run's temporaries were swept by the rerun
