"""finetune: loss on response tokens only, seeded, full or LoRA, saves a loadable HF dir."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosift.chat import collate, encode_pair
from infosift.train import TrainConfig, finetune, step_loss


def load(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_loss_ignores_prompt_tokens(tiny_model_dir, gsm_records):
    model, tok = load(tiny_model_dir)
    rec = gsm_records[0]
    a = collate([encode_pair(tok, rec["prompt"], rec["response"])], tok.pad_token_id)
    b = collate([encode_pair(tok, "how many apples are left ?", rec["response"])], tok.pad_token_id)
    cfg = TrainConfig()
    # Same response after a different prompt: the loss differs only through context, so compare
    # against a hand-computed mean over response positions instead.
    with torch.no_grad():
        logits = model(input_ids=a["input_ids"]).logits[0, :-1]
        target = a["input_ids"][0, 1:]
        mask = a["response_mask"][0, 1:]
        manual = torch.nn.functional.cross_entropy(logits[mask], target[mask])
        assert torch.allclose(step_loss(model, a, cfg), manual, atol=1e-5)
        assert not torch.allclose(step_loss(model, a, cfg), step_loss(model, b, cfg))


def test_full_finetune_lowers_loss_and_is_seeded(tiny_model_dir, gsm_records, tmp_path):
    cfg = TrainConfig(lr=1e-2, epochs=5, batch_size=8, warmup_ratio=0.0, seed=0, max_length=64)
    model, tok = load(tiny_model_dir)
    hist = finetune(model, tok, gsm_records, tmp_path / "a", cfg, device="cpu", progress=False)
    assert len(hist) == 5 * 5
    first, last = sum(h["loss"] for h in hist[:5]) / 5, sum(h["loss"] for h in hist[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    model2, tok2 = load(tiny_model_dir)
    hist2 = finetune(model2, tok2, gsm_records, tmp_path / "b", cfg, device="cpu", progress=False)
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "tokenizer_config.json").exists()
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model2.parameters())


def test_lora_trains_adapters_and_saves_merged(tiny_model_dir, gsm_records, tmp_path):
    model, tok = load(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(lr=1e-2, epochs=1, batch_size=8, seed=0, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    finetune(model, tok, gsm_records, tmp_path / "lora", cfg, device="cpu", progress=False)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora").state_dict()
    assert set(merged) == set(before)  # a plain HF model, no adapter keys left
    changed = [k for k in before if not torch.allclose(before[k], merged[k])]
    assert changed and all("proj" in k for k in changed)  # only LoRA-wrapped linears moved


def test_infosift_loss_trains(tiny_model_dir, gsm_records, tmp_path):
    model, tok = load(tiny_model_dir)
    cfg = TrainConfig(loss_type="infosift", lr=3e-3, epochs=1, batch_size=8, seed=0)
    hist = finetune(model, tok, gsm_records, tmp_path / "i", cfg, device="cpu", progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
