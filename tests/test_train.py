"""finetune on transformers' Trainer: the token-weighted loss by hand, accumulation, learning, seeds, LoRA, names."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosift.chat import collate, encode_record
from infosift.errors import InfosiftError
from infosift.losses import token_weight
from infosift.train import TrainConfig, finetune, last_checkpoint


def load(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def hand_loss_and_grad(model, tok, records, loss_type, P=0.93, max_length=64):
    """Σ over every example and assistant token of sg[w(q)]·(−log q), divided by the assistant tokens of all of
    them: the loss of one optimizer step over ``records``, computed one example at a time in plain torch."""
    model.zero_grad()
    n = 0
    terms = []
    for rec in records:
        b = collate([encode_record(tok, rec, max_length)], tok.pad_token_id)
        logits = model(input_ids=b["input_ids"]).logits[0, :-1].float()
        target, mask = b["input_ids"][0, 1:], b["response_mask"][0, 1:]
        logq = torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0][mask]
        w = token_weight(logq.exp().detach(), loss_type, P)
        terms.append(-(w * logq).sum())
        n += int(mask.sum())
    loss = torch.stack(terms).sum() / n
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("loss_type", ["nll", "dft", "infosift"])
def test_one_step_equals_hand_loss_and_gradient_with_accumulation(tiny_model_dir, gsm_records, tmp_path, loss_type):
    """4 examples = one optimizer step of 2 micro-batches of 2: the logged loss is the hand loss over all 4, and
    with SGD at lr 1 (no clipping, no decay) the weights move by exactly minus the hand gradient."""
    recs = gsm_records[:4]
    model, tok = load(tiny_model_dir)
    want_loss, want_grad = hand_loss_and_grad(model, tok, recs, loss_type)
    model.zero_grad(set_to_none=True)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    cfg = TrainConfig(loss_type=loss_type, max_length=64, args={
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "optim": "sgd", "learning_rate": 1.0,
        "max_grad_norm": 0.0, "warmup_steps": 0, "lr_scheduler_type": "constant"})  # fmt: skip
    res = finetune(model, tok, recs, tmp_path / "m", cfg, checkpoint_dir=tmp_path / "ck", progress=False)
    assert len(res.history) == 1
    assert res.history[0]["loss"] == pytest.approx(want_loss, rel=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(before[k] - p.detach(), want_grad[k], rtol=1e-4, atol=1e-6)


def test_training_lowers_loss_and_is_seeded(tiny_model_dir, gsm_records, tmp_path):
    cfg = TrainConfig(max_length=64, args={"learning_rate": 1e-2, "num_train_epochs": 5,
                                           "per_device_train_batch_size": 8, "warmup_steps": 0})  # fmt: skip
    model, tok = load(tiny_model_dir)
    hist = finetune(model, tok, gsm_records, tmp_path / "a", cfg, progress=False).history
    assert len(hist) == 5 * 5
    first, last = sum(h["loss"] for h in hist[:5]) / 5, sum(h["loss"] for h in hist[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    model2, tok2 = load(tiny_model_dir)
    hist2 = finetune(model2, tok2, gsm_records, tmp_path / "b", cfg, progress=False).history
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "tokenizer_config.json").exists()
    assert not (tmp_path / "a" / "training_args.bin").exists()  # no pickle among the outputs
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k])


def test_first_adam_step_moves_each_weight_by_the_learning_rate(tiny_model_dir, gsm_records, tmp_path):
    """Adam's first step is lr·g/(|g|+eps) per weight: every weight with a clear gradient moves by lr, no more."""
    lr = 1e-3
    model, tok = load(tiny_model_dir)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    cfg = TrainConfig(max_length=64, args={"learning_rate": lr, "per_device_train_batch_size": 8, "max_steps": 1,
                                           "warmup_steps": 0, "lr_scheduler_type": "constant", "max_grad_norm": 0.0,
                                           "optim": "adamw_torch", "weight_decay": 0.0})  # fmt: skip
    finetune(model, tok, gsm_records, tmp_path / "m", cfg, progress=False)
    step = torch.cat([(p.detach() - before[k]).abs().flatten() for k, p in model.named_parameters()])
    assert float(step.max()) <= lr * (1 + 1e-4)
    assert float((step > 0.99 * lr).float().mean()) > 0.5  # most weights see a gradient far above eps


def test_lora_saves_the_adapter_and_it_loads_on_its_base(tiny_model_dir, gsm_records, tmp_path):
    from peft import PeftModel

    model, tok = load(tiny_model_dir)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(max_length=64, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                      args={"learning_rate": 1e-2, "per_device_train_batch_size": 8})  # fmt: skip
    finetune(model, tok, gsm_records, tmp_path / "lora", cfg, progress=False)
    files = {p.name for p in (tmp_path / "lora").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    base, _ = load(tiny_model_dir)
    for k, v in base.state_dict().items():  # the base on disk is untouched
        torch.testing.assert_close(v, base_sd[k])
    loaded = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    ids = torch.tensor([[4, 20, 30, 40, 5]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
        assert not torch.allclose(loaded(input_ids=ids).logits, load(tiny_model_dir)[0](input_ids=ids).logits)


def test_lora_merged_saves_a_plain_model(tiny_model_dir, gsm_records, tmp_path):
    model, tok = load(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(max_length=64, lora={"r": 4, "alpha": 8, "dropout": 0.0}, save="merged",
                      args={"learning_rate": 1e-2, "per_device_train_batch_size": 8})  # fmt: skip
    finetune(model, tok, gsm_records, tmp_path / "m", cfg, progress=False)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").state_dict()
    assert set(merged) == set(before)
    changed = [k for k in before if not torch.allclose(before[k], merged[k])]
    assert changed and all("proj" in k for k in changed)


def test_checkpoints_are_removed_after_success(tiny_model_dir, gsm_records, tmp_path):
    model, tok = load(tiny_model_dir)
    cfg = TrainConfig(max_length=64, args={"per_device_train_batch_size": 8, "save_steps": 2})
    finetune(model, tok, gsm_records, tmp_path / "m", cfg, checkpoint_dir=tmp_path / "ck", progress=False)
    assert not (tmp_path / "ck").exists()


def test_last_checkpoint_skips_one_cut_short(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path).name == "checkpoint-4"
    assert last_checkpoint(tmp_path / "none") is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"args": {"lr": 1e-3}}, "unknown trainer argument 'lr'"),
        ({"args": {"learning_rat": 1e-3}}, "did you mean learning_rate"),
        ({"args": {"output_dir": "x"}}, "set by infosift"),
        ({"args": {"warmup_ratio": 0.1, "warmup_steps": 3}}, "not both"),
        ({"loss_type": "focal"}, "unknown loss_type 'focal'"),
        ({"loss_type": "infosift", "infosft_p": 0.3}, "infosft_p"),
        ({"lora": {"rank": 8}}, "lora: unknown key 'rank'"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"save": "both"}, "save: must be one of"),
        ({"max_length": 2}, "max_length"),
    ],
)
def test_config_is_checked_when_built(kwargs, words):
    with pytest.raises(InfosiftError, match=words.replace("(", r"\(")):
        TrainConfig(**kwargs)


def test_warmup_ratio_is_read_as_transformers_5_spells_it():
    assert TrainConfig(args={"warmup_ratio": 0.2}).args == {"warmup_steps": 0.2}
