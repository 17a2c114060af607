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


def write_params(cwd: Path, params: dict) -> None:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "params.yaml download.pool_size: must be >= 1, got 0"),
        (-3, "params.yaml download.pool_size: must be >= 1, got -3"),
        ("many", "params.yaml download.pool_size: must be a whole number, got 'many'"),
        (2.5, "params.yaml download.pool_size: must be a whole number, got 2.5"),
    ],
)
def test_download_rejects_bad_pool_size(tmp_path, value, message):
    cwd = setup_download(tmp_path, GOOD.encode())
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["download"]["pool_size"] = value
    write_params(cwd, params)
    assert_one_error_line(run_stage(cwd, "stages.download"), message)
    assert not (cwd / "data" / "download").exists()


def test_yaml_syntax_error_names_the_line(tmp_path):
    cwd = setup_download(tmp_path, GOOD.encode())
    (cwd / "params.yaml").write_text("download:\n  dataset: gsm8k\n  pool_size: [1, 2\n")
    assert_one_error_line(run_stage(cwd, "stages.download"), "params.yaml:")
    assert "not valid YAML" in run_stage(cwd, "stages.download").stderr


def test_unknown_download_key_is_named(tmp_path):
    cwd = setup_download(tmp_path, GOOD.encode())
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["download"]["pool_sise"] = 5
    write_params(cwd, params)
    assert_one_error_line(run_stage(cwd, "stages.download"), "download.pool_sise: unknown parameter")


def test_json_array_where_jsonl_is_expected(tmp_path):
    cwd = setup_download(tmp_path, b"[" + GOOD.strip().encode() + b"]\n")
    assert_one_error_line(run_stage(cwd, "stages.download"), "this is a JSON array, but JSONL expects")


def select_workspace(tmp_path: Path, feats: TokenFeatures) -> Path:
    cwd = setup_download(tmp_path, GOOD.encode())
    assert run_stage(cwd, "stages.download").returncode == 0
    feats.save(cwd / "data/features/pool")
    params = {"select": {"seeds": [0], "budget_unit": "examples", "variants": {"random": {"selector": "random"}}}}
    write_params(cwd, params)
    return cwd


def small_features(n: int = 5) -> TokenFeatures:
    rng = np.random.default_rng(0)
    return TokenFeatures.from_list([rng.normal(size=(3, 4)).astype(np.float16) for _ in range(n)])


def test_truncated_values_file(tmp_path):
    cwd = select_workspace(tmp_path, small_features())
    values = cwd / "data/features/pool/values.npy"
    values.write_bytes(values.read_bytes()[:-10])
    assert_one_error_line(run_stage(cwd, "stages.select", "random", "2"), "unreadable or inconsistent token features")
    assert not (cwd / "results").exists()


def test_offsets_that_disagree_with_values(tmp_path):
    cwd = select_workspace(tmp_path, small_features())
    np.save(cwd / "data/features/pool/offsets.npy", np.array([0, 3, 6, 9, 12, 99]))
    assert_one_error_line(run_stage(cwd, "stages.select", "random", "2"), "offsets must start at 0 and end at")


def test_ids_that_disagree_with_offsets(tmp_path):
    cwd = select_workspace(tmp_path, small_features())
    (cwd / "data/features/pool/ids.json").write_text(json.dumps(["a", "b"]))
    assert_one_error_line(run_stage(cwd, "stages.select", "random", "2"), "offsets must have N+1=3 entries")


def test_nan_features_fail_even_for_random(tmp_path):
    feats = small_features()
    feats.values[4, 1] = np.nan
    cwd = select_workspace(tmp_path, feats)
    assert_one_error_line(run_stage(cwd, "stages.select", "random", "2"), "contain NaN or Inf; rerun embed")


@pytest.mark.parametrize(
    ("seeds", "unit", "message"),
    [
        ([], "examples", "select.seeds: empty"),
        (["a"], "examples", "select.seeds[0]: must be a whole number"),
        ([0], "bytes", "select.budget_unit: must be one of examples, tokens"),
    ],
)
def test_select_rejects_bad_params(tmp_path, seeds, unit, message):
    cwd = select_workspace(tmp_path, small_features())
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["select"].update({"seeds": seeds, "budget_unit": unit})
    write_params(cwd, params)
    assert_one_error_line(run_stage(cwd, "stages.select", "random", "2"), message)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"lr": "fast"}, "finetune.train.lr: must be a number, got 'fast'"),
        ({"lr": 0}, "finetune.train.lr: must be > 0"),
        ({"epochs": 0}, "finetune.train.epochs: must be >= 1"),
        ({"warmup_ratio": 1.5}, "finetune.train.warmup_ratio: must be <= 1.0"),
        ({"sed": 1}, "finetune.train.sed: unknown parameter"),
    ],
)
def test_finetune_rejects_bad_train_params(tmp_path, train, message):
    write_params(tmp_path, {"finetune": {"losses": ["nll"], "train": train}})
    assert_one_error_line(run_stage(tmp_path, "stages.finetune", "random", "5", "0", "nll"), message)
    assert not (tmp_path / "models").exists()


def test_finetune_rejects_a_non_integer_seed(tmp_path):
    write_params(tmp_path, {"finetune": {"losses": ["nll"], "train": {}}})
    assert_one_error_line(run_stage(tmp_path, "stages.finetune", "random", "5", "x", "nll"), "seed must be a whole")


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ({"n_test": 0}, "evaluate.n_test: must be >= 1, got 0"),
        ({"gsm8k": {"limit": -1}}, "evaluate.gsm8k.limit: must be >= 0"),
        ({"mt_bench": {"limit": 1, "judge": "gpt"}}, "evaluate.mt_bench.judge: must be one of overlap, local"),
    ],
)
def test_evaluate_rejects_bad_params(tmp_path, evaluate, message):
    write_params(tmp_path, {"evaluate": evaluate})
    assert_one_error_line(run_stage(tmp_path, "stages.evaluate", "base"), message)


@pytest.mark.parametrize(
    ("section", "value", "stage", "message"),
    [
        (
            "sketch",
            {"target": "t.jsonl", "sources": {"a": "a.jsonl"}, "m": 0},
            "stages.sketch",
            "sketch.m: must be >= 1",
        ),
        ("sketch", {"target": "t.jsonl", "sources": ["a.jsonl"]}, "stages.sketch", "sketch.sources: must be a dict"),
        ("compare", {"bootstrap": "many"}, "stages.compare", "compare.bootstrap: must be a whole number"),
        ("compare", {"mlflow": "yes"}, "stages.compare", "compare.mlflow: must be a bool"),
    ],
)
def test_sketch_and_compare_reject_bad_params(tmp_path, section, value, stage, message):
    write_params(tmp_path, {section: value})
    assert_one_error_line(run_stage(tmp_path, stage), message)
