"""model.torch_dtype and model.attn_implementation reach every model that embed and evaluate load, as they reach
finetune's: one reading of params.yaml model (stages.model.load_options) for every stage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from tests.tiny import gsm_rows, write_jsonl

MODEL = {"torch_dtype": "bfloat16", "attn_implementation": "eager"}  # neither is what the tiny model loads with


@pytest.fixture
def loads(monkeypatch) -> list:
    """(dtype, attention) of each model transformers loads from here on (also lm-eval's, which calls it directly)."""
    from transformers import AutoModelForCausalLM

    seen, real = [], AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        seen.append((model.dtype, model.config._attn_implementation))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    return seen


def records(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": r["question"], "response": r["answer"]} for i, r in enumerate(gsm_rows(n, 4))]


def workspace(monkeypatch, tmp_path, tiny_model_dir, section: dict):
    params = {"model": {"base_model": str(tiny_model_dir), **MODEL}, **section}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_embed_loads_the_model_in_model_torch_dtype_and_stores_features_in_embed_dtype(
    monkeypatch, tmp_path, tiny_model_dir, loads
):
    from stages.embed import main

    ws = workspace(monkeypatch, tmp_path, tiny_model_dir,
                   {"embed": {"max_length": 64, "shard_size": 4, "batch_tokens": 256, "device": "cpu"}})  # fmt: skip
    write_jsonl(ws / "data/download/pool.jsonl", records(6))
    write_jsonl(ws / "data/download/target.jsonl", records(2))
    main([])
    assert len(loads) == 3  # pool and target shards, then the quality scores
    assert set(loads) == {(torch.bfloat16, "eager")}
    meta = json.loads((ws / "data/features/pool/meta.json").read_text())
    assert (meta["compute"], meta["weights"], meta["attn_implementation"]) == ("cpu/bfloat16", "bfloat16", "eager")
    assert np.load(ws / "data/features/pool/values.npy", mmap_mode="r").dtype == np.float16  # embed.dtype's, still


def test_evaluate_loads_every_model_in_model_torch_dtype(monkeypatch, tmp_path, tiny_model_dir, mt_files, loads):
    """Held-out NLL, lm-eval's GSM8K, the answering model and the local judge."""
    from stages.evaluate import main

    evaluate = {"n_test": 2, "max_length": 64, "batch_size": 2, "device": "cpu",
                "gsm8k": {"limit": 1, "max_gen_toks": 2, "batch_size": 1},
                "mt_bench": {"limit": 1, "judge": "local", "max_new_tokens": 2, "batch_size": 1}}  # fmt: skip
    ws = workspace(monkeypatch, tmp_path, tiny_model_dir, {"evaluate": evaluate})
    write_jsonl(ws / "data/download/test.jsonl", records(2))
    shutil.copytree(f"{mt_files['mirror']}/mt_bench", ws / "data/mt_bench/evaluate")
    main(["base"])
    assert len(loads) == 4
    assert set(loads) == {(torch.bfloat16, "eager")}
    assert json.loads((ws / "results/evaluate/base/metrics.json").read_text())["n_examples"] == 2


def test_held_out_nll_scores_in_float32_unless_a_dtype_is_named(tiny_model_dir, loads):
    """auto keeps scoring's float32 (a fine-tune's small steps survive it); a named dtype is the user's to choose."""
    from infosift.evaluate import heldout_nll

    heldout_nll(str(tiny_model_dir), records(2), max_length=64, device="cpu", model_kwargs={"dtype": "auto"})
    heldout_nll(str(tiny_model_dir), records(2), max_length=64, device="cpu", model_kwargs={"dtype": "bfloat16"})
    assert [dtype for dtype, _ in loads] == [torch.float32, torch.bfloat16]
