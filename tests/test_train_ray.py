"""One fine-tune across 2 Ray Train workers (a local Ray cluster this test starts, CPU, gloo) equals a 1-process
run at the same global batch, and writes the same kind of model dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray.train", reason="the [ray] extra (CI installs it before the server tests)")
pytestmark = pytest.mark.server

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"


def test_ray_train_equals_one_local_process(tmp_path):
    import ray

    from infosift.errors import ClusterError
    from infosift.scale.train import ray_finetune
    from infosift.train import TrainConfig
    from tests.scripts.train_tiny import records
    from tests.tiny import save_tiny_model

    local = tmp_path / "local"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(local), str(tmp_path / "ck1"), "4", "1"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    want = [h["loss"] for h in json.loads((local / "history.json").read_text())["history"]]

    base = save_tiny_model(tmp_path / "base")  # the same seed-0 tiny model the script builds in memory
    cfg = TrainConfig(max_length=64, args={"per_device_train_batch_size": 2, "learning_rate": 1e-2, "max_steps": 6,
                                           "save_steps": 1, "warmup_steps": 0})  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        seen: list[dict] = []
        res = ray_finetune({"num_workers": 2}, base, records(), tmp_path / "ray-model", cfg, {}, tmp_path / "ck2",
                           on_step=seen.append, storage=tmp_path / "ray-store")  # fmt: skip
    finally:
        ray.shutdown()
    got = [h["loss"] for h in res.history]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=0)
    assert seen == res.history  # the curve reaches the stage's tracker
    assert (tmp_path / "ray-model" / "model.safetensors").exists()
    assert (tmp_path / "ray-model" / "tokenizer_config.json").exists()
    with pytest.raises(ClusterError, match="cannot reach Ray at 127.0.0.1:9"):
        ray_finetune({"address": "127.0.0.1:9"}, base, records(), tmp_path / "x", cfg, {}, tmp_path / "ck3")
