"""The finetune stage launching itself on 2 processes (torchrun, gloo) writes what 1 process writes at the same
global batch: the same loss curve (within float tolerance) and one model dir, written by rank 0."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from infosift.manifest import build_manifest
from tests.tiny import gsm_rows, save_tiny_model, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def workspace(tmp: Path, model: Path, processes: int, batch: int) -> Path:
    pool = [{"id": f"r{i}", "prompt": r["question"], "response": r["answer"], "source": "t"}
            for i, r in enumerate(gsm_rows(16, seed=2))]  # fmt: skip
    write_jsonl(tmp / "data/download/pool.jsonl", pool)
    manifest = build_manifest(variant="random", selector="random", params={}, budget=16, seed=0,
                              ids=[r["id"] for r in pool], indices=np.arange(16), gains=None, inputs={})  # fmt: skip
    path = tmp / "results/select/random-16/seed-0/manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    params = {"model": {"base_model": str(model)}, "compare": {"mlflow": False},
              "finetune": {"losses": ["nll"], "max_length": 64, "processes": processes,
                           "train": {"learning_rate": 1e-2, "per_device_train_batch_size": batch, "warmup_steps": 0,
                                     "use_cpu": True}}}  # fmt: skip
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


def curve(ws: Path) -> list[float]:
    with (ws / "results/finetune/random-16-s0-nll/train_loss.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_the_stage_on_two_processes_writes_what_one_writes(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = {}
    for procs, batch in ((1, 4), (2, 2)):
        ws = workspace(tmp_path / f"p{procs}", model, procs, batch)
        proc = subprocess.run([sys.executable, "-m", "stages.finetune", "random", "16", "0", "nll"], cwd=ws, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[procs] = ws
    one, two = curve(runs[1]), curve(runs[2])
    assert len(one) == len(two) == 4
    np.testing.assert_allclose(two, one, rtol=1e-5)
    prov = json.loads((runs[2] / "models/random-16-s0-nll/infosift.json").read_text())
    assert prov["trained"]["processes"] == 2 and prov["trained"]["n_examples"] == 16
    assert not list((runs[2] / "models").glob(".tmp-*"))
