"""One fine-tune on 2 processes (torchrun, gloo) equals 1 process at the same global batch; a fine-tune killed
with SIGKILL resumes from its last checkpoint to the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def train(
    out: Path, ckpt: Path, batch: int, accum: int, steps: int = 6, procs: int = 1, hold_at: int | None = None
) -> subprocess.Popen:
    launcher = [sys.executable] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]  # fmt: skip
    cmd = [*launcher, str(SCRIPT), str(out), str(ckpt), str(batch), str(accum), str(steps)]
    env = ENV if hold_at is None else {**ENV, "TRAIN_TINY_HOLD_AT": str(hold_at)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]


def history(out: Path) -> dict:
    return json.loads((out / "history.json").read_text())


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def test_two_processes_equal_one_at_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    finish(train(one, tmp_path / "ck1", batch=4, accum=1))
    finish(train(two, tmp_path / "ck2", batch=2, accum=1, procs=2))
    a, b = [h["loss"] for h in history(one)["history"]], [h["loss"] for h in history(two)["history"]]
    assert len(a) == len(b) == 6
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=0)
    assert a[-1] < a[0]  # it trained
    wa, wb = weights(one), weights(two)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-5
    # accumulation is the third way to the same batch: 1 process, micro-batches of 2, 2 per step
    acc = tmp_path / "acc"
    finish(train(acc, tmp_path / "ck3", batch=2, accum=2))
    torch.testing.assert_close(torch.tensor([h["loss"] for h in history(acc)["history"]]), torch.tensor(a),
                               rtol=1e-5, atol=0)  # fmt: skip


def test_sigkill_half_way_resumes_to_the_uninterrupted_weights(tmp_path):
    steps, ckpt = 10, tmp_path / "ck"
    killed = train(tmp_path / "killed", ckpt, batch=4, accum=1, steps=steps, hold_at=5)
    deadline = time.time() + 240
    while not (ckpt / "held").exists():
        assert killed.poll() is None and time.time() < deadline, "the run ended before its 5th checkpoint"
        time.sleep(0.05)
    assert (ckpt / "checkpoint-5" / "trainer_state.json").exists()
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert not (tmp_path / "killed" / "history.json").exists()
    resumed = tmp_path / "resumed"
    finish(train(resumed, ckpt, batch=4, accum=1, steps=steps))
    assert history(resumed)["resumed"] is not None  # it did start from a checkpoint, not from scratch
    assert not ckpt.exists()  # checkpoints go once the model is saved
    whole = tmp_path / "whole"
    finish(train(whole, tmp_path / "ck-whole", batch=4, accum=1, steps=steps))
    wr, ww = weights(resumed), weights(whole)
    assert max(float((wr[k] - ww[k]).abs().max()) for k in ww) <= 1e-6
