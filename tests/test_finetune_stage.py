"""The finetune stage as DVC runs it: its provenance counts the records max_length cut; killed with SIGKILL half-way,
the rerun resumes from its last checkpoint and ends with an uninterrupted run's weights, its checkpoints removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from safetensors.torch import load_file

from infosift.chat import encode_pair
from tests.test_finetune_processes import workspace
from tests.tiny import build_tokenizer, save_tiny_model

ROOT = Path(__file__).resolve().parent.parent
NAME = "random-16-s0-nll"
ITEM = ["random", "16", "0", "nll"]
# the stage, with tests/scripts/train_tiny.py's hold_at added to the trainer's callbacks: it parks the run once the
# checkpoint of step HOLD is saved, so the kill lands at that step whatever the machine's speed
HELD_STAGE = """
import runpy, sys
import infosift.train as train
from tests.scripts.train_tiny import hold_at
real, step = train.finetune, int(sys.argv[1])
def held(*args, callbacks=None, **kwargs):
    return real(*args, callbacks=[*(callbacks or []), hold_at(step)], **kwargs)
train.finetune = held
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def with_train(ws: Path, **train) -> Path:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["finetune"]["train"].update(train)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws


def test_provenance_counts_the_records_max_length_cut(tmp_path, monkeypatch):
    from stages.finetune import main

    ws = workspace(tmp_path, save_tiny_model(tmp_path / "model"), processes=1, batch=16)  # one step
    pool = [json.loads(line) for line in (ws / "data/download/pool.jsonl").read_text().splitlines()]
    pool[0]["response"] = " ".join([pool[0]["response"]] * 4)  # its tail is cut
    pool[1]["prompt"] = " ".join([pool[1]["prompt"]] * 6)  # its question fills max_length: no answer token left
    (ws / "data/download/pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    tok, max_length = build_tokenizer(), yaml.safe_load((ws / "params.yaml").read_text())["finetune"]["max_length"]
    longer = [len(encode_pair(tok, r["prompt"], r["response"]).input_ids) > max_length for r in pool]
    assert longer[:2] == [True, True] and len(encode_pair(tok, pool[1]["prompt"], "").input_ids) > max_length
    monkeypatch.chdir(ws)
    main(ITEM)
    trained = json.loads((ws / "models" / NAME / "infosift.json").read_text())["trained"]
    assert (trained["n_truncated"], trained["n_empty"], trained["n_examples"]) == (sum(longer), 1, len(pool) - 1)


def stage(ws: Path, hold: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    head = [sys.executable, "-m"] if hold is None else [sys.executable, "-c", HELD_STAGE, str(hold)]
    return subprocess.Popen([*head, "stages.finetune", *ITEM], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_a_stage_killed_half_way_resumes_when_rerun_to_the_uninterrupted_weights(tmp_path):
    model, train = save_tiny_model(tmp_path / "model"), {"max_steps": 8, "save_steps": 1}
    killed = with_train(workspace(tmp_path / "killed", model, processes=1, batch=4), **train)
    proc = stage(killed, hold=4)
    deadline = time.monotonic() + 240
    while not list(killed.glob(".cache/checkpoints/*/held")):
        assert proc.poll() is None and time.monotonic() < deadline, "the stage ended before its 4th checkpoint"
        time.sleep(0.05)
    (run_dir,) = (killed / ".cache/checkpoints").iterdir()
    assert (run_dir / "checkpoint-4" / "trainer_state.json").is_file()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (killed / "models" / NAME).exists()  # nothing that looks finished
    out = finish(stage(killed))  # the rerun, as dvc repro or the flow would start it
    assert "(resumed from checkpoint-4)" in out, out[-2000:]
    assert not run_dir.exists()  # checkpoints go once the model is saved
    whole = with_train(workspace(tmp_path / "whole", model, processes=1, batch=4), **train)
    finish(stage(whole))
    resumed, ref = (load_file(ws / "models" / NAME / "model.safetensors") for ws in (killed, whole))
    assert max(float((resumed[k] - ref[k]).abs().max()) for k in ref) <= 1e-6
    steps = [
        json.loads((ws / "models" / NAME / "infosift.json").read_text())["trained"]["steps"] for ws in (killed, whole)
    ]
    assert steps == [8, 8]
