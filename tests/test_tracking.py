"""MLflow lineage: the nested runs compare logs, built from a tiny results tree and a dvc.lock dict (no MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from infosift.tracking import base_run, dvc_lock_hashes, lineage_tags, numeric, variant_run

LOCK = {
    "download": {"data/download": "md5-download"},
    "select@fishersft-4": {"data/embed": "md5-embed", "results/select/fishersft-4": "md5-select"},
    "finetune@fishersft-4-0-nll": {"models/fishersft-4-s0-nll": "md5-model"},
}
ROW = {"variant": "fishersft-4-s0-nll", "selector": "fishersft", "budget": 4, "seed": 0, "loss": "nll",
       "train_tokens": 90, "n_train": 4, "nll_per_token": 1.5, "done": True}  # fmt: skip


def write(root: Path, path: str, text: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """What select, finetune and evaluate write for one model, fishersft-4-s0-nll."""
    manifest = {"selector": "fishersft", "variant": "fishersft", "params": {"ridge": 1.0}, "seed": 0,
                "hash": "manifest-hash", "inputs": {"features": "features-sha"}, "seconds": 1.5}  # fmt: skip
    write(tmp_path, "results/select/fishersft-4/seed-0/manifest.json", json.dumps(manifest))
    write(tmp_path, "results/finetune/fishersft-4-s0-nll/train_loss.csv", "step,loss\n1,2.5\n2,2.0\n")
    write(tmp_path, "results/evaluate/fishersft-4-s0-nll/metrics.json", "{}")
    write(tmp_path, "results/evaluate/fishersft-4-s0-nll/per_example.jsonl", "")
    return tmp_path


def test_variant_run_carries_params_lineage_tags_and_artifacts(tree):
    run = variant_run(ROW, "fishersft-4", LOCK, {"lr": 1e-4}, log_models=True, root=tree)
    assert run.name == "fishersft-4-s0-nll"
    assert run.params == {"selector": "fishersft", "variant": "fishersft", "budget": 4, "loss_type": "nll",
                          "selector_params": {"ridge": 1.0}, "seed": 0, "finetune": {"lr": 1e-4}}  # fmt: skip
    assert run.metrics == {"budget": 4, "seed": 0, "train_tokens": 90, "n_train": 4, "nll_per_token": 1.5,
                           "select_seconds": 1.5}  # fmt: skip
    assert run.tags == {
        "infosift.variant": "fishersft-4-s0-nll",
        "infosift.manifest_hash": "manifest-hash",
        "infosift.features_sha256": "features-sha",
        "dvc.md5.data/embed": "md5-embed",
        "dvc.md5.results/select/fishersft-4": "md5-select",
        "dvc.md5.models/fishersft-4-s0-nll": "md5-model",
    }
    evaluated = tree / "results/evaluate/fishersft-4-s0-nll"
    assert run.artifacts == {
        "manifest": str(tree / "results/select/fishersft-4/seed-0/manifest.json"),
        "metrics": str(evaluated / "metrics.json"),
        "train_loss": str(tree / "results/finetune/fishersft-4-s0-nll/train_loss.csv"),
        "per_example": str(evaluated / "per_example.jsonl"),
        "model": str(tree / "models/fishersft-4-s0-nll"),
    }
    assert run.step_metrics == {"train_loss": [(1, 2.5), (2, 2.0)]}


def test_optional_artifacts_follow_what_exists(tree):
    (tree / "results/evaluate/fishersft-4-s0-nll/per_example.jsonl").unlink()
    (tree / "results/evaluate/fishersft-4-s0-nll/gsm8k_samples").mkdir()
    run = variant_run(ROW, "fishersft-4", {}, {}, log_models=False, root=tree)
    assert set(run.artifacts) == {"manifest", "metrics", "train_loss", "gsm8k_samples"}
    assert not any(k.startswith("dvc.md5.") for k in run.tags)  # a stage dvc.lock does not know adds no tags


def test_paths_are_relative_by_default(tree, monkeypatch):
    monkeypatch.chdir(tree)
    run = variant_run(ROW, "fishersft-4", LOCK, {})
    assert run.artifacts["manifest"] == "results/select/fishersft-4/seed-0/manifest.json"
    assert run.artifacts["model"] == "models/fishersft-4-s0-nll"


def test_base_run():
    run = base_run({"base": "tiny"}, {"variant": "base", "budget": 0, "nll_per_token": 2.0})
    assert (run.name, run.params, run.tags) == ("base", {"model": {"base": "tiny"}}, {"infosift.variant": "base"})
    assert run.metrics == {"budget": 0, "nll_per_token": 2.0}
    assert run.artifacts == {"metrics": "results/evaluate/base/metrics.json"}


def test_lineage_tags_and_lock_hashes(tmp_path):
    lock = {"stages": {"download": {"deps": [{"path": "stages/download.py", "md5": "a"}],
                                    "outs": [{"path": "data/download", "md5": "b.dir"}, {"path": "x"}]}}}  # fmt: skip
    write(tmp_path, "dvc.lock", yaml.safe_dump(lock))
    hashes = dvc_lock_hashes(tmp_path / "dvc.lock")
    assert hashes == {"download": {"stages/download.py": "a", "data/download": "b.dir"}}
    assert lineage_tags(hashes, ("download", "embed")) == {
        "dvc.md5.stages/download.py": "a",
        "dvc.md5.data/download": "b.dir",
    }


def test_numeric_keeps_numbers_only():
    assert numeric({"a": 1, "b": 2.5, "c": True, "d": "x", "e": None}) == {"a": 1, "b": 2.5}
