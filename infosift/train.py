"""Supervised fine-tuning on chosen records: chat template, loss on response tokens only, full or LoRA.

A plain PyTorch loop on purpose: the part that matters (which tokens count, and with what weight)
stays visible in `step_loss`; peft supplies LoRA and transformers the schedule.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from infosift.chat import collate, encode_record, pad_id_of
from infosift.device import pick_device
from infosift.errors import InfosiftError
from infosift.losses import weighted_token_loss
from infosift.models import autocast


@dataclass
class TrainConfig:
    loss_type: str = "nll"  # nll | dft | infosift
    lr: float = 2e-5
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    infosft_p: float = 0.93
    seed: int = 0
    lora: dict | None = None  # e.g. {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
    max_grad_norm: float = 1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_loss(model, batch: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    """Next-token loss over response tokens: logits at t predict token t+1, so shift by one."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return weighted_token_loss(
        logits[:, :-1],
        batch["input_ids"][:, 1:],
        batch["response_mask"][:, 1:],
        loss_type=cfg.loss_type,
        P=cfg.infosft_p,
    )


def wrap_lora(model, lora: dict):
    """Adapters from peft; only they train, the base weights stay frozen.

    Which modules ``target_modules`` names is known only once the model is here: peft's refusal (no module
    matches) becomes one InfosiftError naming the LoRA settings, not a bare peft message.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(lora.get("r", 16)),
        lora_alpha=int(lora.get("alpha", 32)),
        lora_dropout=float(lora.get("dropout", 0.05)),
        target_modules=lora.get("target_modules", "all-linear"),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # peft's NoMatchingPeftModuleError is one
        raise InfosiftError(f"lora {lora!r}: {' '.join(str(e).split())}") from None


def finetune(
    model,
    tokenizer,
    records: list[dict],
    out_dir: str | Path,
    cfg: TrainConfig,
    device: str | None = None,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train `model` on `records`, save an HF dir (merged if LoRA) to out_dir; return the loss history.

    ``on_step`` gets each history entry ({step, epoch, loss, lr}) as soon as the step is done: a tracker can show
    the curve while training runs (the stage passes an MLflow logger; the library knows nothing of it).
    """
    from transformers import get_cosine_schedule_with_warmup

    if not records:
        raise ValueError("no training records")
    seed_everything(cfg.seed)
    device = pick_device(device)
    encoded = [encode_record(tokenizer, r, cfg.max_length) for r in records]
    encoded = [e for e in encoded if e.n_response > 0]
    if cfg.lora:
        model = wrap_lora(model, cfg.lora)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / (cfg.batch_size * cfg.grad_accum))
    total = steps_per_epoch * cfg.epochs
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    pad_id = pad_id_of(tokenizer)
    rng = np.random.default_rng(cfg.seed)
    history: list[dict] = []
    bar = tqdm(total=total, desc=f"finetune ({cfg.loss_type})", disable=not progress, unit="step")
    step = 0
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(encoded))
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        for b0 in range(0, len(batches), cfg.grad_accum):
            group = batches[b0 : b0 + cfg.grad_accum]
            loss_sum = 0.0
            for idx in group:
                batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad_id).items()}
                with autocast(device)[0]:  # bf16 products on CUDA, fp32 on CPU
                    loss = step_loss(model, batch, cfg) / len(group)
                loss.backward()
                loss_sum += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            history.append({"step": step, "epoch": epoch, "loss": loss_sum, "lr": sched.get_last_lr()[0]})
            if on_step is not None:
                on_step(history[-1])
            bar.set_postfix(loss=f"{loss_sum:.4f}")
            bar.update(1)
    bar.close()
    if cfg.lora:
        model = model.merge_and_unload()
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)
    tokenizer.save_pretrained(out)
    return history
