"""Bad input ends a stage with one clear error line and leaves no output DVC would take as finished."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from infosift.features import TokenFeatures
from stages._common import EXIT_BAD_INPUT, StageError

ROOT = Path(__file__).resolve().parent.parent


def run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


def assert_one_error_line(proc: subprocess.CompletedProcess, pattern: str, code: int = EXIT_BAD_INPUT) -> None:
    assert proc.returncode == code, proc.stderr
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
    pool = [{"id": i, "prompt": f"q{i}", "response": f"a{i}", "source": "t"} for i in feats.ids]  # what was embedded
    (cwd / "data/download/pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
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
        ({"lr": 1e-3}, "unknown trainer argument 'lr'"),
        ({"learning_rate": "fast"}, "trainer argument learning_rate: must be a float, got 'fast'"),
        ({"num_train_epochs": 1, "lr_scheduler_type": "sometimes"}, "finetune: trainer arguments:"),
        ({"sed": 1}, "unknown trainer argument 'sed'"),
        ({"output_dir": "elsewhere"}, "'output_dir' is set by infosift"),
        # the trainer's MLflow callback would open a second run per variant beside infosift's own
        ({"report_to": "mlflow"}, "finetune.train.report_to: 'mlflow' would open a second MLflow run per variant"),
        ({"report_to": ["tensorboard", "mlflow"]}, "finetune.train.report_to: ['tensorboard', 'mlflow'] would"),
        ({"report_to": "all"}, "finetune.train.report_to: 'all' would open a second MLflow run"),
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


# -- red-team regressions: each bad input below once ended in a traceback, a silent acceptance or a line
# -- without its place; in-process where the check runs before any model loads, so they stay fast.


def in_workspace(monkeypatch, tmp_path: Path, params: dict) -> Path:
    """tmp_path as the working directory of a stage, holding ``params`` as params.yaml."""
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_params_file_not_utf8_and_sections_that_are_not_mappings(tmp_path):
    from stages._common import params

    path = tmp_path / "params.yaml"
    path.write_bytes(b"download:\n  dataset: \xff\n")
    with pytest.raises(StageError, match=r"params.yaml: not UTF-8 \(byte 21\)"):
        params("download", path=str(path))
    for value in ("fishersft", [1, 2], None):
        path.write_text(yaml.safe_dump({"select": value}))
        with pytest.raises(StageError, match="params.yaml select: must be a mapping"):
            params("select", path=str(path))


def test_params_refuses_a_key_given_twice(tmp_path):
    from stages._common import params

    path = tmp_path / "params.yaml"
    path.write_text("select:\n  variants:\n    random: {selector: random}\n    random: {selector: fishersft}\n")
    with pytest.raises(StageError, match=r"params.yaml:4: not valid YAML \(key 'random' appears twice"):
        params("select", path=str(path))


def test_unknown_keys_of_mixed_types():
    from stages._common import check_keys

    with pytest.raises(StageError, match="params.yaml evaluate.1: unknown parameter"):
        check_keys({1: 2, "foo": 3, "n_test": 1}, "evaluate", {"n_test"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_check_param_rejects_non_finite_floats(value):
    from stages._common import check_param

    with pytest.raises(StageError, match="finetune.train.lr: must be a finite number"):
        check_param(value, "finetune.train.lr", float, low=0.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "b: empty"),
        ([5, 5], "b: 5 is listed twice"),
        ([5, 5.5], r"b\[1\]: must be a whole number"),
        (5, "b: must be a list"),
    ],
)
def test_check_items(values, message):
    from stages._common import check_items

    with pytest.raises(StageError, match=message):
        check_items(values, "b", int, low=1)


@pytest.mark.parametrize("device", ["tpu", "3", "cuda:99", "", "meta", 0])
def test_check_device_names_the_parameter(device):
    from stages._common import check_device

    with pytest.raises(StageError, match="params.yaml evaluate.device: "):
        check_device(device, "evaluate.device")


def test_error_after_a_progress_bar_starts_its_own_line(monkeypatch, capsys):
    from tqdm.auto import tqdm

    from infosift.errors import DataError
    from stages._common import run

    def main(argv):
        bar = tqdm(total=3, desc="embed")
        bar.update(1)
        raise DataError("pool.jsonl:2: missing field 'response'")

    monkeypatch.setattr(sys, "argv", ["stage"])
    with pytest.raises(SystemExit) as exit_:
        run(main)
    assert exit_.value.code == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.split("\n")
    assert "error: pool.jsonl:2: missing field 'response'" in lines


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"base_model": "x", "trust_remote_code": "yes"}, "model.trust_remote_code: must be a bool"),
        ({"cache_dir": ".cache"}, "model.base_model: required"),
        ({"base_model": 5}, "model.base_model: must be a str"),
        ({"base_model": " "}, "model.base_model: empty"),
        ({"base_model": "x", "cache_dir": 3}, "model.cache_dir: must be a str"),
        ({"base_model": "x", "revision": "main"}, "model.revision: unknown parameter"),
    ],
)
def test_model_section_is_checked(monkeypatch, tmp_path, model, message):
    from stages.model import base_model_dir

    in_workspace(monkeypatch, tmp_path, {"model": model})
    with pytest.raises(StageError, match=message):
        base_model_dir()


def broken_copy(src: Path, dst: Path, change) -> Path:
    import shutil

    shutil.copytree(src, dst)
    change(dst)
    return dst


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "holds no weights"),
        (lambda d: (d / "config.json").write_text("{bad"), "config.json: not valid JSON"),
        (lambda d: (d / "config.json").write_text("[]"), "config.json: expected a JSON object, got list"),
        (lambda d: (d / "config.json").write_text('{"model_type": "nosuch"}'), "model_type 'nosuch' is not one"),
    ],
)
def test_model_dir_is_checked_before_loading(tmp_path, tiny_model_dir, change, message):
    from infosift.errors import ModelResolutionError
    from infosift.models import check_model_dir

    with pytest.raises(ModelResolutionError, match=message):
        check_model_dir(broken_copy(tiny_model_dir, tmp_path / "m", change))


def test_truncated_weights_and_bad_device_are_one_error(tmp_path, tiny_model_dir):
    from infosift.device import torch_device
    from infosift.errors import DeviceError, ModelResolutionError
    from infosift.models import load_model_and_tokenizer

    def truncate(d: Path) -> None:
        (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000])

    model_dir = broken_copy(tiny_model_dir, tmp_path / "m", truncate)
    with pytest.raises(ModelResolutionError, match=r"m: cannot load the model \(SafetensorError"):
        load_model_and_tokenizer(model_dir, device="cpu")
    with pytest.raises(DeviceError, match="'tpu' is not a torch device"):
        torch_device("tpu")
    with pytest.raises(DeviceError, match="not available here"):
        torch_device("cuda:99")


def test_rows_nested_too_deeply_or_not_parquet(tmp_path):
    from infosift.data import read_records
    from infosift.errors import DataError

    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(DataError, match="deep.jsonl:1: JSON nested too deeply"):
        read_records(deep)
    fake = tmp_path / "train.parquet"
    fake.write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match="train.parquet: not a readable Parquet file"):
        read_records(fake)


def test_missing_mirror_split_names_where_it_looked(tmp_path):
    from infosift.data import locate
    from infosift.errors import DataError

    with pytest.raises(DataError, match=r"split 'train': not in the local mirror \(.*mirror/mine/train\{.jsonl"):
        locate("mine", "train", tmp_path / "mirror", tmp_path / "hub")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ('{"question": "q", "answer": "a"}\n', ":1: missing field 'id' (has: answer, question); expected a normalized"),
        ('{"id": "a", "prompt": "q", "response": 5}\n', ":1: field 'response' must be a non-empty string, got 5"),
        ('{"id": "a", "prompt": "q", "response": "r"}\n' * 2, ":2: id 'a' repeats line 1"),
    ],
)
def test_read_examples_checks_normalized_records(tmp_path, rows, message):
    from infosift.data import read_examples
    from infosift.errors import DataError

    path = tmp_path / "pool.jsonl"
    path.write_text(rows)
    with pytest.raises(DataError, match=re.escape(message)):
        read_examples(path)
    path.write_text("")
    assert read_examples(path, allow_empty=True) == []


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("question.jsonl", '{"question_id": 1, "category": "math", "turns": []}\n', "question.jsonl:1: field 'turns'"),
        ("question.jsonl", '{"question_id": 1, "turns": ["a"]}\n', "question.jsonl:1: missing field 'category'"),
        ("reference_answer_gpt-4.jsonl", '{"question_id": 9, "choices": []}\n', "question_id 9 is not in question"),
        ("reference_answer_gpt-4.jsonl", '{"question_id": 2}\n', "gpt-4.jsonl:1: missing field 'choices'"),
        ("judge_prompts.jsonl", '{"name": "single-v1", "prompt_template": "{nope}"}\n', "uses {nope}; known"),
        ("judge_prompts.jsonl", '{"name": "single-v1", "prompt_template": "{question}"}\n', "no judge prompt named"),
    ],
)
def test_mt_bench_files_are_checked(mt_files, name, text, message):
    from infosift.data import mt_bench_files, read_mt_bench
    from infosift.errors import DataError

    (Path(mt_files["mirror"]) / "mt_bench" / name).write_text(text)
    with pytest.raises(DataError, match=message):
        read_mt_bench(mt_bench_files(mt_files["mirror"]))


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("values.npy", lambda v: v.astype(np.int32), "values.npy must hold floating-point numbers, got dtype int32"),
        ("offsets.npy", lambda o: o + 0.5, "offsets.npy must hold integer numbers, got dtype float64"),
        ("costs.npy", lambda c: c + 0.5, "costs.npy must hold integer numbers"),
    ],
)
def test_features_with_a_wrong_dtype(tmp_path, name, array, message):
    from infosift.errors import FeaturesError

    feats = small_features()
    feats.costs = np.full(len(feats), 3)
    feats.save(tmp_path / "pool")
    np.save(tmp_path / "pool" / name, array(np.load(tmp_path / "pool" / name)))
    with pytest.raises(FeaturesError, match=message):
        TokenFeatures.load(tmp_path / "pool")


@pytest.mark.parametrize(("ids", "message"), [([0, 1, 2, 3, 4], "list of string ids"), (["a"] * 5, "id 'a' repeats")])
def test_features_with_bad_ids(tmp_path, ids, message):
    from infosift.errors import FeaturesError

    small_features().save(tmp_path / "pool")
    (tmp_path / "pool" / "ids.json").write_text(json.dumps(ids))
    with pytest.raises(FeaturesError, match=message):
        TokenFeatures.load(tmp_path / "pool")


def test_check_finite_covers_token_stats():
    from infosift.errors import FeaturesError

    feats = small_features()
    feats.p_next = np.ones(len(feats.values), np.float32)
    feats.p_next[7] = np.nan
    with pytest.raises(FeaturesError, match=r"p_next of sentence 2 \(id 2\) contain NaN"):
        feats.check_finite()


@pytest.mark.parametrize("chunk_bytes", [1, 40, 1 << 28])
def test_check_finite_chunked_on_memmap_finds_every_row(tmp_path, chunk_bytes):
    """A memory-mapped pool is scanned in chunks (bounded memory); the first bad row is found whichever chunk
    holds it, and named by its sentence, also when a chunk boundary falls inside a sentence."""
    from infosift.errors import FeaturesError

    feats = small_features()
    feats.save(tmp_path / "pool")
    mapped = TokenFeatures.load(tmp_path / "pool", mmap=True)
    mapped.check_finite(chunk_bytes=chunk_bytes)
    for row in (0, len(feats.values) - 1, int(feats.offsets[2]) + 1):
        values = np.array(feats.values)
        values[row, -1] = np.inf
        np.save(tmp_path / "pool" / "values.npy", values)
        mapped = TokenFeatures.load(tmp_path / "pool", mmap=True)
        sentence = int(np.searchsorted(feats.offsets, row, side="right") - 1)
        with pytest.raises(FeaturesError, match=rf"features of sentence {sentence} \(id"):
            mapped.check_finite(chunk_bytes=chunk_bytes)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1, 2]", "manifest.json: expected a JSON object, got list"), ("{bad", "manifest.json:1: not valid JSON"),
     ("", "manifest.json:1: not valid JSON"), ('{"ids": []}', "manifest.json: hash does not match")],
)  # fmt: skip
def test_read_manifest(tmp_path, text, message):
    from infosift.errors import DataError
    from infosift.manifest import read_manifest

    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_manifest(path)


def test_read_manifest_wants_string_ids(tmp_path):
    from infosift.errors import DataError
    from infosift.manifest import content_hash, read_manifest

    body = {"ids": [1, 2]}
    (tmp_path / "manifest.json").write_text(json.dumps({**body, "hash": content_hash(body)}))
    with pytest.raises(DataError, match="field 'ids' must be a list of record ids"):
        read_manifest(tmp_path / "manifest.json")


@pytest.mark.parametrize(
    ("text", "weights", "message"),
    [
        ("{bad", {"h": 1.0}, "scores.json:1: not valid JSON"),
        ('{"a": {"h": "high"}}', {"h": 1.0}, "scores.json: id a attribute 'h' is not a finite number"),
        ('{"a": {"h": 1}}', ["h"], "attribute weights must be a mapping"),
    ],
)
def test_attribute_scores_name_the_file(tmp_path, text, weights, message):
    from infosift.errors import DataError
    from infosift.queries.attribute_scores import load_attribute_scores

    (tmp_path / "scores.json").write_text(text)
    with pytest.raises(DataError, match=message):
        load_attribute_scores(tmp_path / "scores.json", ["a"], weights)


def test_queries_need_their_inputs(tmp_path):
    from infosift.errors import SelectionError
    from infosift.queries import QuerySource, get_query

    TokenFeatures(np.zeros((0, 4), np.float16), np.zeros(1, np.int64), []).save(tmp_path / "target")
    source = QuerySource(ids=["a"], features=tmp_path, download=tmp_path)
    with pytest.raises(SelectionError, match="query 'targets' needs a target slice"):
        get_query("targets")(source)
    with pytest.raises(SelectionError, match="query 'scores' needs .*self_scores.npy"):
        get_query("scores")(source)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"contaminate": {"share": 0.2, "seed": 1.5}}, "download.contaminate.seed: must be a whole number"),
        ({"train_split": 1}, "download.train_split: must be a str"),
        ({"dataset": ""}, "download.dataset: empty"),
    ],
)
def test_download_params(monkeypatch, tmp_path, change, message):
    from stages.download import checked_params, contamination_option

    base = {"dataset": "gsm8k", "mirror_dir": "m", "pool_size": None, "target_size": 0, "seed": 0}
    in_workspace(monkeypatch, tmp_path, {"download": {**base, **change}})
    with pytest.raises(StageError, match=message):
        p = checked_params()
        contamination_option(p.get("contaminate"), p["seed"])


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ({"device": "tpu"}, "evaluate.device: device 'tpu' is not a torch device"),
        ({"gsm8k": {"limit": 1, "num_fewshot": 2}}, "evaluate.gsm8k.num_fewshot: unknown parameter"),
        ({"gsm8k": {"limit": 1, "max_gen_toks": 0}}, "evaluate.gsm8k.max_gen_toks: must be >= 1"),
        ({"gsm8k": {"limit": 1, "batch_size": "x"}}, "evaluate.gsm8k.batch_size: must be a whole number"),
        ({"mt_bench": {"limit": 1, "batch_size": 0}}, "evaluate.mt_bench.batch_size: must be >= 1"),
        ({"mt_bench": {"limit": 1, "max_new_tokens": -1}}, "evaluate.mt_bench.max_new_tokens: must be >= 1"),
        ({"mt_bench": {"limit": 1, "judge": "local", "judge_model": 5}}, "mt_bench.judge_model: must be a str"),
        ({"batch_size": float("nan")}, "evaluate.batch_size: must be a whole number"),
    ],
)
def test_evaluate_checks_every_param_first(monkeypatch, tmp_path, evaluate, message):
    from stages.evaluate import main

    in_workspace(monkeypatch, tmp_path, {"evaluate": evaluate})
    with pytest.raises(StageError, match=message):
        main(["base"])


def evaluate_workspace(monkeypatch, tmp_path: Path, tiny_model_dir: Path, evaluate: dict, mirror: str = "m") -> Path:
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "models" / "v-5-s0-nll")
    (tmp_path / "data" / "download").mkdir(parents=True)
    (tmp_path / "data/download/test.jsonl").write_text('{"id": "a", "prompt": "what is 3 ?", "response": "3"}\n')
    if Path(mirror, "mt_bench").is_dir():  # where the fetch_mt_bench stage would have copied it
        shutil.copytree(Path(mirror, "mt_bench"), tmp_path / "data" / "mt_bench" / "evaluate")
    params = {"model": {"base_model": str(tiny_model_dir)}, "evaluate": evaluate}
    return in_workspace(monkeypatch, tmp_path, params)


def test_evaluate_checks_its_inputs_before_loading_a_model(monkeypatch, tmp_path, tiny_model_dir, mt_files):
    from infosift.errors import DataError, ModelResolutionError
    from stages.evaluate import main

    cwd = evaluate_workspace(monkeypatch, tmp_path, tiny_model_dir, {"n_test": 1})
    (cwd / "models/v-5-s0-nll/model.safetensors").unlink()
    with pytest.raises(ModelResolutionError, match="v-5-s0-nll holds no weights"):
        main(["v-5-s0-nll"])
    cwd = evaluate_workspace(monkeypatch, tmp_path / "2", tiny_model_dir, {"n_test": 1})
    (cwd / "data/download/test.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match="test.jsonl:1: missing field 'id'"):
        main(["v-5-s0-nll"])
    (Path(mt_files["mirror"]) / "mt_bench/judge_prompts.jsonl").write_text('{"name": "single-v1"}\n')
    mt = {"mt_bench": {"limit": 1}}
    cwd = evaluate_workspace(monkeypatch, tmp_path / "3", tiny_model_dir, mt, mt_files["mirror"])
    with pytest.raises(DataError, match="judge_prompts.jsonl:1: field 'prompt_template' must be a string"):
        main(["v-5-s0-nll"])
    assert not (cwd / "results").exists()


def test_evaluate_checks_a_local_judge_model_first(monkeypatch, tmp_path, tiny_model_dir, mt_files):
    from stages.evaluate import main

    mt = {"mt_bench": {"limit": 1, "judge": "local", "judge_model": "./nope"}}
    cwd = evaluate_workspace(monkeypatch, tmp_path, tiny_model_dir, mt, mt_files["mirror"])
    with pytest.raises(StageError, match="evaluate.mt_bench.judge_model: model directory nope does not exist"):
        main(["v-5-s0-nll"])
    assert not (cwd / "results").exists()


@pytest.mark.parametrize(
    ("sketch", "message"),
    [
        ({"sources": {"a": 5}}, "sketch.sources.a: must be a str"),
        ({"sources": {"a": None}}, "sketch.sources.a: required"),
        ({"sources": {"target": "t.jsonl"}}, "sketch.sources.target: 'target' names the target set"),
        ({"sources": {"a": "t.jsonl"}, "m": 1 << 40}, "sketch.m: must be <= 1048576"),
        ({"sources": {"a": "raw.jsonl"}}, "raw.jsonl:1: missing field 'id'"),
    ],
)
def test_sketch_checks_params_and_corpora_before_the_model(monkeypatch, tmp_path, sketch, message):
    from infosift.errors import DataError
    from stages.sketch import main

    (tmp_path / "t.jsonl").write_text('{"id": "a", "prompt": "q", "response": "r"}\n')
    (tmp_path / "raw.jsonl").write_text('{"question": "q", "answer": "r"}\n')
    in_workspace(monkeypatch, tmp_path, {"sketch": {"target": "t.jsonl", **sketch}})  # no model section: never reached
    with pytest.raises((StageError, DataError), match=message):
        main([])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"d": "x"}, "synthetic.d: must be a whole number"),
        ({"num_classes": 1}, "synthetic.num_classes: must be >= 2"),
        ({"test_size": 0}, "synthetic.test_size: must be >= 1"),
        ({"theta_scale": float("nan")}, "synthetic.theta_scale: must be a finite number"),
        ({"scale_range": [0.1, float("inf")]}, r"synthetic.scale_range\[1\]: must be a finite number"),
        ({"scale_range": [1]}, "synthetic.scale_range: must be \\[low, high\\]"),
        ({"budgets": [5.5]}, r"synthetic.budgets\[0\]: must be a whole number"),
        ({"budgets": [5, 5]}, "synthetic.budgets: 5 is listed twice"),
        ({"seeds": 2.5}, "synthetic.seeds: must be a whole number"),
        ({"seeds": True}, "synthetic.seeds: must be a whole number"),
        ({"ridge": float("nan")}, "synthetic.ridge: must be a finite number"),
        ({"selectors": {"fishersft": {"rige": 1.0}}}, "synthetic.selectors.fishersft: .*no parameter .rige."),
        ({"selectors": {"random": "x"}}, "synthetic.selectors.random: must be a dict"),
        ({"dd": 3}, "synthetic.dd: unknown parameter"),
    ],
)
def test_synthetic_checks_every_param(change, message):
    from stages.synthetic import config

    base = {"pool_size": 30, "test_size": 10, "budgets": [5], "seeds": 1, "selectors": {"random": {}}}
    with pytest.raises(StageError, match=message):
        config({**base, **change})


# -- second red-team round: finetune, embed, compare and the atomic writer. Each case runs the stage's main
# -- through stages._common.run in-process and wants exactly one `error:` line and no output written.


def one_error_line(monkeypatch, capsys, main, argv: list[str]) -> str:
    """What ``run(main)`` prints for a bad input: exactly one `error: ` line on stderr, exit code 1."""
    from stages._common import run

    monkeypatch.setattr(sys, "argv", ["stage", *argv])
    with pytest.raises(SystemExit) as exit_:
        run(main)
    assert exit_.value.code == EXIT_BAD_INPUT
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


RECORD = {"id": "a", "prompt": "what is 3 ?", "response": "3"}


@pytest.mark.parametrize(
    ("finetune", "loss", "message"),
    [
        ({"losses": ["nll"], "train": {}, "trian": {}}, "nll", "params.yaml finetune.trian: unknown parameter"),
        ({"losses": "nll"}, "nll", "finetune.losses: must be a list"),
        ({"losses": ["nll", "nl"]}, "nll", "finetune.losses[1]: must be one of dft, infosift, nll"),
        ({"infosft_p": 1.0}, "infosift", "finetune: infosft_p: infosift needs 0.5 < P < 1"),
        ({"infosft_p": 0.3}, "infosift", "finetune: infosft_p: infosift needs 0.5 < P < 1"),
        ({"lora": {"r": "x"}}, "nll", "finetune: lora.r: must be an integer >= 1, got 'x'"),
        ({"lora": {"rank": 4}}, "nll", "finetune: lora: unknown key 'rank'"),
        ({"lora": {"r": 0}}, "nll", "finetune: lora.r: must be an integer >= 1, got 0"),
        ({"lora": {"alpha": -1}}, "nll", "finetune: lora.alpha: must be an integer >= 1"),
        ({"lora": {"dropout": 1}}, "nll", "finetune: lora.dropout: must be in [0, 1)"),
        ({"lora": {"target_modules": 5}}, "nll", "finetune: lora.target_modules: a module name"),
        ({"lora": {"target_modules": []}}, "nll", "finetune: lora.target_modules: a module name"),
        ({"lora": {"target_modules": ["q", 1]}}, "nll", "finetune: lora.target_modules: a module name"),
        ({"lora": {"r": 4}, "save": "both"}, "nll", "finetune.save: must be one of adapter, merged"),
        ({"processes": 0}, "nll", "finetune.processes: must be >= 1"),
        ({"processes": 4096}, "nll", "finetune.processes: 4096 processes, but this machine has"),
        ({"engine": "slurm"}, "nll", "finetune.engine: must be one of local, ray"),
        ({"ray": {"workers": 2}}, "nll", "finetune.ray.workers: unknown parameter"),
        ({"train": {"fp16": True}}, "nll", "finetune.train.fp16: fp16 training needs a CUDA device"),
        # good values pass the checks above: the stage goes on to look for the selection
        (
            {"infosft_p": 0.93, "lora": {"r": 4, "target_modules": ["q"]}, "train": {"learning_rate": 1e-4}},
            "infosift",
            "manifest.json missing",
        ),
    ],
)
def test_finetune_checks_its_params_before_anything(monkeypatch, tmp_path, capsys, finetune, loss, message):
    from stages.finetune import main

    in_workspace(monkeypatch, tmp_path, {"finetune": finetune})
    line = one_error_line(monkeypatch, capsys, main, ["random", "5", "0", loss])
    assert message in line, line
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("model", "finetune", "message"),
    [
        ({"quantization": "4bit"}, {"lora": {"r": 4}}, "model.quantization: 4bit (QLoRA) needs a CUDA device"),
        ({"quantization": "8bit"}, {}, "model.quantization: must be one of 4bit"),
        ({"torch_dtype": "fp8"}, {}, "model.torch_dtype: must be one of auto, bfloat16, float16, float32"),
        ({"attn_implementation": "fast"}, {}, "model.attn_implementation: must be one of eager"),
        ({"chat_template": "missing.jinja"}, {}, "model.chat_template: missing.jinja is not a file"),
        ({}, {"train": {"bf16": True}}, "finetune.train.bf16: this CPU has no bf16 arithmetic"),
    ],
)
def test_finetune_refuses_what_this_machine_cannot_run(monkeypatch, tmp_path, capsys, model, finetune, message):
    import stages.finetune
    from stages.finetune import main

    monkeypatch.setattr(stages.finetune, "cpu_has_bf16", lambda: False)  # as on a CPU without avx512_bf16/amx
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    in_workspace(monkeypatch, tmp_path, {"model": {"base_model": "bundled:x", **model}, "finetune": finetune})
    line = one_error_line(monkeypatch, capsys, main, ["random", "5", "0", "nll"])
    assert message in line, line
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists()


def hashed(body: dict) -> str:
    from infosift.manifest import content_hash

    return json.dumps({**body, "hash": content_hash(body)})


@pytest.mark.parametrize(
    ("manifest", "pool", "message"),
    [
        ("{bad", RECORD, "random-5/seed-0/manifest.json:1: not valid JSON"),
        ("", RECORD, "random-5/seed-0/manifest.json:1: not valid JSON"),
        (b"\xff", RECORD, "random-5/seed-0/manifest.json: not UTF-8"),
        (hashed({"variant": "random"}), RECORD, "manifest.json: field 'ids' must be a list of record ids"),
        (hashed({"ids": "abc"}), RECORD, "manifest.json: field 'ids' must be a list of record ids"),
        (hashed({"ids": ["a"]}), {"id": "a", "prompt": "q"}, "pool.jsonl:1: missing field 'response'"),
        (hashed({"ids": ["a"]}), {**RECORD, "response": 5}, "pool.jsonl:1: field 'response' must be a non-empty"),
        (hashed({"ids": ["b"]}), RECORD, "1 selected ids are not in the pool (first: b)"),  # the checks let it by
    ],
)
def test_finetune_reads_its_selection_and_pool_checked(monkeypatch, tmp_path, capsys, manifest, pool, message):
    from stages.finetune import main

    cwd = in_workspace(monkeypatch, tmp_path, {"finetune": {"losses": ["nll"], "train": {}}})
    path = cwd / "results/select/random-5/seed-0/manifest.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    (cwd / "data/download").mkdir(parents=True)
    (cwd / "data/download/pool.jsonl").write_text(json.dumps(pool) + "\n")
    line = one_error_line(monkeypatch, capsys, main, ["random", "5", "0", "nll"])
    assert message in line, line
    assert not (cwd / "models").exists() and not (cwd / "results/finetune").exists()


def test_an_unreachable_ray_address_fails_finetune_before_any_output_or_mlflow_run(
    monkeypatch, tmp_path, capsys, tiny_model_dir
):
    """A selection and pool that would train: the address is the one thing wrong, and nothing is begun for it."""
    import time

    from stages._common import EXIT_TRANSIENT, run
    from stages.finetune import main
    from tests.test_finetune_processes import workspace
    from tests.test_tracking import closed_port

    ws = workspace(tmp_path, tiny_model_dir, processes=1, batch=4)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    address = f"127.0.0.1:{closed_port()}"
    params["finetune"].update(engine="ray", ray={"address": address, "num_workers": 2})
    params["compare"] = {"mlflow": True}  # the default: a live run would open in ws/mlflow.db
    in_workspace(monkeypatch, ws, params)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(sys, "argv", ["stage", "random", "16", "0", "nll"])
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        run(main)
    assert time.monotonic() - start < 10
    assert exit_.value.code == EXIT_TRANSIENT  # refused now; a rerun may find the cluster up
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: params.yaml finetune.ray.address: cannot reach Ray at {address}"
    )
    assert not (ws / "models").exists() and not (ws / "results/finetune").exists()
    assert not (ws / "mlflow.db").exists() and not (ws / ".cache").exists()


def test_lora_target_modules_the_model_lacks_is_one_error_naming_lora():
    from infosift.errors import InfosiftError
    from infosift.train import wrap_lora
    from tests.tiny import build_model, build_tokenizer

    model = build_model(len(build_tokenizer()))
    with pytest.raises(InfosiftError, match=r"lora \{'target_modules': \['nope'\]\}: Target modules \{'nope'\} not"):
        wrap_lora(model, {"target_modules": ["nope"]})
    assert wrap_lora(model, {"r": 2, "target_modules": ["q_proj"]}) is not None  # the same call with a real module


@pytest.mark.parametrize(
    ("pool", "target", "embed", "message"),
    [
        ([{"id": "a", "prompt": "q"}], "", {}, "pool.jsonl:1: missing field 'response'"),
        ([RECORD, {"id": "b", "response": "r"}], "", {}, "pool.jsonl:2: missing field 'prompt'"),
        ([{**RECORD, "response": 5}], "", {}, "pool.jsonl:1: field 'response' must be a non-empty string, got 5"),
        ([{**RECORD, "response": " "}], "", {}, "pool.jsonl:1: field 'response' must be a non-empty string"),
        ([{**RECORD, "id": 3}], "", {}, "pool.jsonl:1: field 'id' must be a non-empty string, got 3"),
        ([RECORD], None, {}, "target.jsonl: file not found"),
        ([RECORD], '{"question": "q", "answer": "a"}\n', {}, "target.jsonl:1: missing field 'id'"),
        ([RECORD], "", {"device": 0}, "params.yaml embed.device: must be a str, got 0"),
        ([RECORD], "", {"device": "tpu"}, "params.yaml embed.device: device 'tpu' is not a torch device"),
        ([RECORD], "", {}, "params.yaml has no 'model' section"),  # good inputs get as far as the model
    ],
)
def test_embed_checks_both_inputs_before_embedding(monkeypatch, tmp_path, capsys, pool, target, embed, message):
    from stages.embed import main

    cwd = in_workspace(monkeypatch, tmp_path, {"embed": embed})  # no model section: a model is never reached
    (cwd / "data/download").mkdir(parents=True)
    (cwd / "data/download/pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    if target is not None:
        (cwd / "data/download/target.jsonl").write_text(target)
    line = one_error_line(monkeypatch, capsys, main, [])
    assert message in line, line
    assert not (cwd / "data/features").exists()


def compare_workspace(monkeypatch, tmp_path: Path) -> Path:
    """The smallest tree compare runs on: base and one random fine-tune, evaluated on three test examples."""
    from infosift.manifest import build_manifest

    params = {
        "select": {"run": ["random"], "budgets": [2], "seeds": [0], "variants": {"random": {"selector": "random"}}},
        "finetune": {"losses": ["nll"]},
        "compare": {"mlflow": False},
    }
    cwd = in_workspace(monkeypatch, tmp_path, params)
    ids = ["a", "b", "c"]
    manifest = build_manifest(
        variant="random", selector="random", params={}, budget=2, seed=0, ids=ids, indices=np.array([0, 1]),
        gains=None, inputs={},
    )  # fmt: skip
    (cwd / "results/select/random-2/seed-0").mkdir(parents=True)
    (cwd / "results/select/random-2/seed-0/manifest.json").write_text(json.dumps(manifest))
    for name in ("base", "random-2-s0-nll"):
        evaluated = cwd / "results/evaluate" / name
        evaluated.mkdir(parents=True)
        (evaluated / "metrics.json").write_text(json.dumps({"nll_per_token": 1.5}))
        rows = [{"id": i, "nll_sum": 3.0 + k, "n_tokens": 2} for k, i in enumerate(ids)]
        (evaluated / "per_example.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (cwd / "data/download").mkdir(parents=True)
    (cwd / "data/download/manifest.json").write_text(json.dumps({"sha256": {"pool": "ab"}, "contamination": {}}))
    return cwd


def test_compare_workspace_is_good(monkeypatch, tmp_path):
    """The tree the bad-input cases below each break in one place runs through as it is."""
    from stages.compare import main

    cwd = compare_workspace(monkeypatch, tmp_path)
    main([])
    assert json.loads((cwd / "results/compare/metrics.json").read_text())["random-2-s0-nll"] == {"nll_per_token": 1.5}


FINE = "results/evaluate/random-2-s0-nll"
PER_EXAMPLE = f"{FINE}/per_example.jsonl"


@pytest.mark.parametrize(
    ("path", "text", "message"),
    [
        (f"{FINE}/metrics.json", "[]", f"{FINE}/metrics.json: expected a JSON object, got list"),
        ("results/evaluate/base/metrics.json", "{bad", "base/metrics.json:1: not valid JSON"),
        ("results/select/random-2/seed-0/manifest.json", "{bad", "seed-0/manifest.json:1: not valid JSON"),
        ("results/select/random-2/seed-0/manifest.json", hashed({"variant": "random"}), "field 'ids' must be a list"),
        ("data/download/manifest.json", "{bad", "data/download/manifest.json:1: not valid JSON"),
        ("data/download/manifest.json", '{"contamination": {"ids": [1]}}', "field 'contamination.ids' must map"),
        ("data/download/manifest.json", '{"contamination": "all"}', "field 'contamination' must be an object"),
        ("data/download/manifest.json", '{"sha256": ["ab"]}', "field 'sha256' must map file names to hex digests"),
        (PER_EXAMPLE, '{"id": "a", "n_tokens": 2}\n', "per_example.jsonl:1: missing field 'nll_sum'"),
        (
            PER_EXAMPLE,
            '{"id": "a", "nll_sum": "x", "n_tokens": 2}\n',
            "per_example.jsonl:1: field 'nll_sum' must be a finite",
        ),
        (
            PER_EXAMPLE,
            '{"id": "a", "nll_sum": 1, "n_tokens": 2.5}\n',
            "per_example.jsonl:1: field 'n_tokens' must be a whole",
        ),
        (PER_EXAMPLE, '{"id": "a", "nll_sum": 1, "n_tokens": 2}\n' * 2, "per_example.jsonl:2: id 'a' is scored twice"),
    ],
)
def test_compare_names_the_file_and_line_of_a_bad_input(monkeypatch, tmp_path, capsys, path, text, message):
    from stages.compare import main

    cwd = compare_workspace(monkeypatch, tmp_path)
    (cwd / path).write_text(text)
    line = one_error_line(monkeypatch, capsys, main, [])
    assert message in line, line
    assert not (cwd / "results/compare").exists()
    assert not list((cwd / "results").glob(".tmp-*"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"select": {"seeds": 0}}, "params.yaml select.seeds: must be a list, got 0"),
        ({"select": {"run": "random"}}, "params.yaml select.run: must be a list, got 'random'"),
        ({"select": {"run": []}}, "params.yaml select.run: empty"),
        ({"select": {"run": ["randm"]}}, "params.yaml select.run[0]: must be one of random, got 'randm'"),
        ({"select": {"budgets": ["6"]}}, "params.yaml select.budgets[0]: must be a whole number, got '6'"),
        ({"select": {"budgets": [2, 2]}}, "params.yaml select.budgets: 2 is listed twice"),
        ({"finetune": {"losses": "nll"}}, "params.yaml finetune.losses: must be a list, got 'nll'"),
        ({"finetune": {"losses": ["nl"]}}, "params.yaml finetune.losses[0]: must be one of dft, infosift, nll"),
        ({"select": None}, "params.yaml has no 'select' section"),
        ({"compare": {"mlflow": True}}, "params.yaml has no 'download' section"),  # mlflow names runs after it
    ],
)
def test_compare_checks_the_matrix_params(monkeypatch, tmp_path, capsys, change, message):
    from stages.compare import main

    cwd = compare_workspace(monkeypatch, tmp_path)
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    for section, value in change.items():
        if value is None:
            del params[section]
        else:
            params[section].update(value)
    write_params(cwd, params)
    if params["compare"]["mlflow"]:  # a reachable tracking store, so that the check after it is what fails
        monkeypatch.setattr("stages.compare.check_server", lambda uri: None)
    line = one_error_line(monkeypatch, capsys, main, [])
    assert message in line, line
    assert not (cwd / "results/compare").exists()


def test_atomic_output_errors_name_the_final_path_not_the_temporary_one(monkeypatch, tmp_path):
    import infosift.atomic
    from infosift.atomic import atomic_output

    final = tmp_path / "results" / "compare"
    with pytest.raises(FileNotFoundError) as inside:
        with atomic_output(final) as tmp:
            (tmp / "table.csv").write_text("x")  # tmp was never created: the error names a path under it
    assert inside.value.filename == str(final / "table.csv")

    def refuse(src, dst):  # what a rename into a directory the user may not write raises
        raise PermissionError(1, "Operation not permitted", str(src), None, str(dst))

    monkeypatch.setattr(infosift.atomic.os, "replace", refuse)
    with pytest.raises(PermissionError) as commit:
        with atomic_output(final) as tmp:
            tmp.mkdir()
    assert commit.value.filename == str(final)
    assert list((tmp_path / "results").iterdir()) == []  # and the temporary sibling is gone


@pytest.fixture(scope="module")
def select_ws(tmp_path_factory) -> Path:
    return select_workspace(tmp_path_factory.mktemp("select-params"), small_features())


@pytest.mark.parametrize(
    ("change", "variant", "message"),
    [
        ({"variants": ["random"]}, "random", "select.variants: must be a dict"),
        ({"variants": {"random": "random"}}, "random", "select.variants.random: must be a dict"),
        ({"bogus": 1}, "random", "select.bogus: unknown parameter"),
        ({"seeds": [0, 0]}, "random", "select.seeds: 0 is listed twice"),
        ({"variants": {"f": {"selector": "fishersft", "rige": 1.0}}}, "f", "has no parameter 'rige'; known: ridge"),
        ({"variants": {"f": {"selector": "fishersft", "ridge": "x"}}}, "f", "'ridge' must be a finite number, got 'x'"),
        ({"variants": {"f": {"selector": "fishersft", "ridge": float("nan")}}}, "f", "finite number, got nan"),
        ({"variants": {"f": {"selector": "fishersft", "batch": 2.5}}}, "f", "'batch' must be a whole number"),
    ],
)
def test_select_variant_and_section_errors(monkeypatch, capsys, select_ws, change, variant, message):
    """A mistyped selector parameter or select section is one line before any selection runs (red-team S1-S7)."""
    from stages import select

    params = {"select": {"seeds": [0], "budget_unit": "examples", "variants": {"random": {"selector": "random"}}}}
    params["select"].update(change)
    write_params(select_ws, params)
    monkeypatch.chdir(select_ws)
    line = one_error_line(monkeypatch, capsys, select.main, [variant, "2"])
    assert message in line, line
    assert not (select_ws / "results").exists()


def test_floats_without_a_dot_are_numbers_as_dvc_writes_them(monkeypatch, tmp_path):
    """`dvc exp run -S finetune.train.learning_rate=1e-3` writes 1e-3 (YAML 1.2); PyYAML alone reads a string."""
    from stages._common import params

    in_workspace(monkeypatch, tmp_path, {})
    (tmp_path / "params.yaml").write_text("sweep: {learning_rates: [2e-05, 1e-3, 1.0e-4, -1E+2], tag: x1e3}\n")
    assert params("sweep") == {"learning_rates": [2e-5, 1e-3, 1e-4, -100.0], "tag": "x1e3"}
