"""Held-out NLL per response token: the cheapest signal of what fine-tuning changed.

    nll = sum_{i, t in response_i} -log p(x_{i,t} | x_{i,<t}) / #response tokens

Token t is predicted by the logits at position t-1 (next-token shift), and only response
tokens count (every assistant turn of the conversation, infosift.chat.encode_record): the prompt, system
and user turns are given, not learned. Pooling over tokens (not a mean of per-example
means) weights long answers by their length, exactly as the SFT loss does. Per-example sums are
returned too, so that two models can be compared example by example (paired intervals).

Scoring is float32 (weights, activations and matmuls) unless model.torch_dtype names a narrower type
(``auto`` keeps float32 here): a short fine-tune at lr 2e-5 moves each weight by ~1e-4, below bf16's
spacing for most weights and TF32's for many, so scoring in either rounds much of the fine-tune away and
narrows the gap between different fine-tunes. bfloat16 is for a model whose float32 weights do not fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from infosift.chat import collate, encode_record, pad_id_of, truncation_report
from infosift.evaluate.answer_span import answer_encodings
from infosift.evaluate.hf import load_causal_lm


def response_nll_rows(logits: torch.Tensor, ids: torch.Tensor, resp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: sum of -log p over response tokens (float64) and their count. logits (B, T, V); ids, resp (B, T)."""
    pred = logits[:, :-1].float()  # position t-1 predicts token t
    target = ids[:, 1:]
    mask = resp[:, 1:]  # a response token at t=0 has no context and is never scored
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    nll = nll.view_as(target).double() * mask
    return nll.sum(dim=1), mask.sum(dim=1)


@contextmanager
def fp32_matmuls() -> Iterator[None]:
    """Full-precision (IEEE) float32 matmuls on CUDA for the block, no TF32; the previous setting comes back.

    Uses torch's fp32_precision API where it exists (torch >= 2.9: mixing it with the legacy flags makes
    later reads of either raise), else the legacy allow_tf32 flags.
    """
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        knobs = [(torch.backends.cuda.matmul, "fp32_precision"), (torch.backends.cudnn.conv, "fp32_precision")]
        off = "ieee"
    else:
        knobs = [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]
        off = False
    saved = [getattr(obj, name) for obj, name in knobs]
    try:
        for obj, name in knobs:
            setattr(obj, name, off)
        yield
    finally:
        for (obj, name), value in zip(knobs, saved, strict=True):
            setattr(obj, name, value)


@torch.no_grad()
def heldout_nll(
    model_dir: str,
    records: list[dict],
    max_length: int = 512,
    batch_size: int = 8,
    device: str | None = None,
    trust_remote_code: bool = False,
    answer_pattern: str | None = None,
    model_kwargs: dict | None = None,
    base_dir: str | None = None,
) -> dict:
    """-log p of the assistant tokens of `records` (whole conversations), pooled and per example.

    With ``answer_pattern`` (a regex for the dataset's answer, GSM8K's ``#### n`` line) the answer's tokens are
    also scored alone (``answer_nll_per_token``; per example ``answer_nll_sum``/``answer_n_tokens``), so that the
    format tokens a short fine-tune learns first cannot hide a difference in content.

    Returns {nll_per_token, n_examples, n_tokens, n_truncated, n_emptied, per_example}; per_example[i] =
    {id, nll_sum, n_tokens} belongs to records[i]. max_length keeps the head of each conversation
    (infosift.chat): n_truncated examples lost their tail, n_emptied of them every assistant token (their
    n_tokens is 0: not scored, but counted).

    ``model_kwargs``: how to load the model (dtype, attn_implementation: stages.model.load_options; dtype None or
    ``auto`` is float32, see the module doc); ``base_dir``: the checked base of an adapter (load_model_and_tokenizer).
    """
    if not records:
        raise ValueError("heldout_nll needs at least one record")
    load = {**(model_kwargs or {}), "base_dir": base_dir}
    if load.get("dtype") in (None, "auto"):
        load["dtype"] = torch.float32
    model, tokenizer = load_causal_lm(model_dir, device, trust_remote_code=trust_remote_code, **load)
    device_type = model.device.type
    pad_id = pad_id_of(tokenizer)
    encoded = [encode_record(tokenizer, r, max_length) for r in records]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))  # less padding
    answers = answer_encodings(tokenizer, records, answer_pattern, max_length) if answer_pattern else None
    sums, counts = [0.0] * len(records), [0] * len(records)
    a_sums, a_counts = [0.0] * len(records), [0] * len(records)
    precision = fp32_matmuls() if device_type == "cuda" else nullcontext()
    with precision, torch.autocast(device_type, enabled=False):  # also off if a caller autocasts around us
        for start in tqdm(range(0, len(order), batch_size), desc="held-out NLL", leave=False):
            rows = order[start : start + batch_size]
            batch = collate([encoded[i] for i in rows], pad_id)
            ids = batch["input_ids"].to(model.device)
            attn, resp = batch["attention_mask"].to(model.device), batch["response_mask"].to(model.device)
            logits = model(input_ids=ids, attention_mask=attn).logits
            s, n = response_nll_rows(logits, ids, resp)
            for i, si, ni in zip(rows, s.tolist(), n.tolist(), strict=True):
                sums[i], counts[i] = si, int(ni)
            if answers is not None:
                ab = {k: v.to(model.device) for k, v in collate([answers[i] for i in rows], pad_id).items()}
                if any(answers[i].input_ids != encoded[i].input_ids for i in rows):  # a conversation: its last pair
                    logits = model(input_ids=ab["input_ids"], attention_mask=ab["attention_mask"]).logits
                sa, na = response_nll_rows(logits, ab["input_ids"], ab["response_mask"])
                for i, si, ni in zip(rows, sa.tolist(), na.tolist(), strict=True):
                    a_sums[i], a_counts[i] = si, int(ni)
    n_tokens = sum(counts)
    cut = truncation_report(encoded, [r["id"] for r in records])
    if n_tokens == 0:
        raise ValueError("no response tokens to score (are responses empty or cut by max_length?)")
    per_example = [{"id": r["id"], "nll_sum": s, "n_tokens": n} for r, s, n in zip(records, sums, counts, strict=True)]
    extra = {}
    if answers is not None:
        for row, sa, na in zip(per_example, a_sums, a_counts, strict=True):
            row.update(answer_nll_sum=sa, answer_n_tokens=na)
        extra = {"answer_nll_per_token": sum(a_sums) / max(sum(a_counts), 1), "answer_n_tokens": sum(a_counts)}
    return {
        **extra,
        "nll_per_token": sum(sums) / n_tokens,
        "n_examples": len(records),
        "n_tokens": n_tokens,
        "n_truncated": cut["truncated"],
        "n_emptied": cut["emptied"],
        "per_example": per_example,
    }
