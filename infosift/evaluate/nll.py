"""Held-out NLL per response token: the cheapest signal of what fine-tuning changed.

    nll = sum_{i, t in response_i} -log p(x_{i,t} | x_{i,<t}) / #response tokens

Token t is predicted by the logits at position t-1 (next-token shift), and only response
tokens count: the prompt is given, not learned. Pooling over tokens (not a mean of per-example
means) weights long answers by their length, exactly as the SFT loss does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from infosift.chat import encode_pair
from infosift.evaluate.hf import load_causal_lm
from infosift.train import collate


def response_nll_sum(logits: torch.Tensor, ids: torch.Tensor, resp: torch.Tensor) -> tuple[float, int]:
    """Sum of -log p over response tokens, and their count. logits (B, T, V); ids, resp (B, T)."""
    pred = logits[:, :-1].float()  # position t-1 predicts token t
    target = ids[:, 1:]
    mask = resp[:, 1:]  # a response token at t=0 has no context and is never scored
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    nll = nll.view_as(target)[mask]
    return float(nll.double().sum()), int(mask.sum())


@torch.no_grad()
def heldout_nll(
    model_dir: str,
    records: list[dict],
    max_length: int = 512,
    batch_size: int = 8,
    device: str | None = None,
) -> dict:
    """Mean -log p per response token of `records` ({id, prompt, response, source}) under the model."""
    if not records:
        raise ValueError("heldout_nll needs at least one record")
    model, tokenizer = load_causal_lm(model_dir, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_pair(tokenizer, r["prompt"], r["response"], max_length) for r in records]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))  # less padding
    total, n_tokens = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc="held-out NLL", leave=False):
        batch = collate([encoded[i] for i in order[start : start + batch_size]], pad_id)
        ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        logits = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device)).logits
        s, n = response_nll_sum(logits, ids.to(model.device), resp.to(model.device))
        total, n_tokens = total + s, n_tokens + n
    if n_tokens == 0:
        raise ValueError("no response tokens to score (are responses empty or cut by max_length?)")
    return {"nll_per_token": total / n_tokens, "n_examples": len(records), "n_tokens": n_tokens}
