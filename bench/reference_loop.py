"""The hand-written single-device SFT loop infosift trained with before it moved to transformers' Trainer, kept
as the reference that bench/stage_speed.py times the Trainer against (same data, batch, schedule, optimizer)."""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from infosift.chat import collate, encode_record, pad_id_of
from infosift.losses import weighted_token_loss


def reference_finetune(model, tokenizer, records: list[dict], lr: float = 2e-5, batch_size: int = 4,
                       max_length: int = 384, warmup_ratio: float = 0.1, seed: int = 0) -> int:  # fmt: skip
    """One epoch of AdamW + cosine over ``records`` in per-micro-batch token means; returns the optimizer steps."""
    torch.manual_seed(seed)
    encoded = [e for e in (encode_record(tokenizer, r, max_length) for r in records) if e.n_response > 0]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = math.ceil(len(encoded) / batch_size)
    sched = get_cosine_schedule_with_warmup(opt, int(warmup_ratio * total), total)
    pad_id = pad_id_of(tokenizer)
    order = np.random.default_rng(seed).permutation(len(encoded))
    for i in range(0, len(order), batch_size):
        rows = [encoded[j] for j in order[i : i + batch_size]]
        batch = {k: v.to(model.device) for k, v in collate(rows, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = weighted_token_loss(logits[:, :-1], batch["input_ids"][:, 1:], batch["response_mask"][:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return total
