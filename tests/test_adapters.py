"""A LoRA fine-tune saves its adapter alone; evaluation loads it on its base and scores what the merged model
scores; an adapter trained on another base than model.base_model is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infosift.evaluate import heldout_nll
from infosift.models import load_model_and_tokenizer, model_fingerprint
from infosift.train import TrainConfig, finetune
from tests.test_stage_errors import in_workspace, one_error_line
from tests.tiny import save_tiny_model, write_jsonl


@pytest.fixture
def adapter(tiny_model_dir, gsm_records, tmp_path):
    """(base dir, adapter dir, merged dir) of one LoRA fine-tune of the tiny model."""
    out = {}
    for save in ("adapter", "merged"):
        model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
        cfg = TrainConfig(max_length=64, lora={"r": 4, "alpha": 8, "dropout": 0.0}, save=save,
                          args={"learning_rate": 1e-2, "per_device_train_batch_size": 8, "use_cpu": True})  # fmt: skip
        finetune(model, tok, gsm_records, tmp_path / save, cfg, progress=False)
        (tmp_path / save / "infosift.json").write_text(
            json.dumps({"base_fingerprint": model_fingerprint(tiny_model_dir)})
        )
        out[save] = tmp_path / save
    return tiny_model_dir, out["adapter"], out["merged"]


def test_adapter_scores_as_its_merged_model_and_not_as_its_base(adapter, gsm_records):
    base, adapter_dir, merged = adapter
    recs = gsm_records[:6]
    a = heldout_nll(str(adapter_dir), recs, max_length=64, device="cpu")["nll_per_token"]
    m = heldout_nll(str(merged), recs, max_length=64, device="cpu")["nll_per_token"]
    b = heldout_nll(str(base), recs, max_length=64, device="cpu")["nll_per_token"]
    assert a == pytest.approx(m, rel=1e-5)
    assert abs(a - b) > 1e-3


def test_evaluate_refuses_an_adapter_of_another_base(adapter, monkeypatch, capsys, tmp_path):
    from stages.evaluate import main

    _, adapter_dir, _ = adapter
    other = save_tiny_model(tmp_path / "other-base", seed=1)
    (tmp_path / "ws").mkdir()
    cwd = in_workspace(monkeypatch, tmp_path / "ws", {"model": {"base_model": str(other)}, "evaluate": {"n_test": 2}})
    (cwd / "models").mkdir()
    (cwd / "models" / "lora-5-s0-nll").symlink_to(adapter_dir)
    (cwd / "data/download").mkdir(parents=True)
    (cwd / "data/download/test.jsonl").write_text(json.dumps({"id": "a", "prompt": "q", "response": "r"}) + "\n")
    capsys.readouterr()  # what building the fixtures printed
    line = one_error_line(monkeypatch, capsys, main, ["lora-5-s0-nll"])
    assert "is a LoRA adapter trained on another base than model.base_model" in line, line
    assert not (cwd / "results").exists()


def test_evaluate_puts_an_adapter_on_model_base_model_when_its_training_base_has_moved(
    gsm_records, monkeypatch, tmp_path
):
    """adapter_config.json keeps the path the base had at training time (on Ray, a worker's); once the fingerprint
    says model.base_model is that base, evaluate loads it from there."""
    from stages.evaluate import main

    trained_on = save_tiny_model(tmp_path / "base")
    model, tok = load_model_and_tokenizer(trained_on, device="cpu")
    cfg = TrainConfig(max_length=64, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                      args={"learning_rate": 1e-2, "per_device_train_batch_size": 8, "use_cpu": True})  # fmt: skip
    adapter_dir = tmp_path / "ws" / "models" / "lora-5-s0-nll"
    finetune(model, tok, gsm_records, adapter_dir, cfg, progress=False)
    (adapter_dir / "infosift.json").write_text(json.dumps({"base_fingerprint": model_fingerprint(trained_on)}))
    test = gsm_records[:3]
    before = heldout_nll(str(adapter_dir), test, max_length=64, device="cpu")["nll_per_token"]
    moved = trained_on.rename(tmp_path / "moved-base")
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded).resolve() == trained_on.resolve() and not Path(recorded).exists()
    evaluate = {"n_test": 3, "max_length": 64, "device": "cpu"}
    cwd = in_workspace(monkeypatch, tmp_path / "ws", {"model": {"base_model": str(moved)}, "evaluate": evaluate})
    write_jsonl(cwd / "data/download/test.jsonl", test)
    main(["lora-5-s0-nll"])
    metrics = json.loads((cwd / "results/evaluate/lora-5-s0-nll/metrics.json").read_text())
    assert metrics["nll_per_token"] == pytest.approx(before, rel=1e-6)
