"""Bad input ends a stage with one clear error line and leaves no output DVC would take as finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from infosift.features import TokenFeatures

ROOT = Path(__file__).resolve().parent.parent


def run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


def assert_one_error_line(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and pattern in lines[0], lines[0]


def setup_download(tmp_path: Path, train_bytes: bytes) -> Path:
    mirror = tmp_path / "mirror" / "gsm8k"
    mirror.mkdir(parents=True)
    (mirror / "train.jsonl").write_bytes(train_bytes)
    (mirror / "test.jsonl").write_text(json.dumps({"question": "t", "answer": "#### 1"}) + "\n")
    params = {
        "download": {
            "dataset": "gsm8k",
            "mirror_dir": str(tmp_path / "mirror"),
            "hub_cache": "hub",
            "pool_size": None,
            "target_size": 0,
            "test_size": None,
            "seed": 0,
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


GOOD = json.dumps({"question": "q", "answer": "a #### 1"}) + "\n"


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ((GOOD + '{"question": "q2", "answer": \n').encode(), "train.jsonl:2: malformed JSON"),
        ((GOOD + '{"question": "q2"}\n').encode(), "train.jsonl:2: missing field 'answer'"),
        (b"", "train.jsonl: file is empty"),
        (GOOD.encode() + b'{"question": "\xff", "answer": "a"}\n', "train.jsonl:2: not UTF-8"),
    ],
)
def test_download_rejects_bad_data(tmp_path, train, message):
    cwd = setup_download(tmp_path, train)
    proc = run_stage(cwd, "stages.download")
    assert_one_error_line(proc, message)
    assert not (cwd / "data" / "download").exists()
    assert not list((cwd / "data").glob(".tmp-*")) if (cwd / "data").exists() else True


def test_download_ok_then_select_errors(tmp_path):
    cwd = setup_download(tmp_path, GOOD.encode())
    proc = run_stage(cwd, "stages.download")
    assert proc.returncode == 0, proc.stderr
    assert (cwd / "data/download/pool.jsonl").exists()

    rng = np.random.default_rng(0)
    feats = TokenFeatures.from_list([rng.normal(size=(3, 4)).astype(np.float16) for _ in range(5)])
    feats.save(cwd / "data/features/pool")
    variants = {"random": {"selector": "random"}, "bogus": {"selector": "nope"}}
    params = {"select": {"seeds": [0], "budget_unit": "examples", "variants": variants}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))

    assert_one_error_line(run_stage(cwd, "stages.select", "random", "6"), "budget 6 is larger than the pool (5")
    assert_one_error_line(run_stage(cwd, "stages.select", "random", "2.5"), "budget must be a whole number")
    assert_one_error_line(run_stage(cwd, "stages.select", "bogus", "2"), "unknown selector 'nope'")
    assert_one_error_line(run_stage(cwd, "stages.select", "missing", "2"), "unknown selector variant 'missing'")
    assert not (cwd / "results").exists() or not any((cwd / "results").rglob("manifest.json"))

    ok = run_stage(cwd, "stages.select", "random", "5")
    assert ok.returncode == 0, ok.stderr
    manifest = json.loads((cwd / "results/select/random-5/seed-0/manifest.json").read_text())
    assert sorted(manifest["indices"]) == [0, 1, 2, 3, 4] and len(manifest["hash"]) == 64

    # token budgets: 15 tokens in all (5 sentences x 3 rows, no costs written -> lengths)
    params["select"]["budget_unit"] = "tokens"
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    assert_one_error_line(run_stage(cwd, "stages.select", "random", "2"), "token budget 2 fits no example")
    assert_one_error_line(run_stage(cwd, "stages.select", "random", "16"), "exceeds the whole pool (15 tokens)")
    ok = run_stage(cwd, "stages.select", "random", "7")
    assert ok.returncode == 0, ok.stderr
    manifest = json.loads((cwd / "results/select/random-7/seed-0/manifest.json").read_text())
    assert len(manifest["ids"]) == 2 and manifest["info"]["train_tokens"] == 6 and manifest["info"]["unit"] == "tokens"
