"""Load a local HF causal LM and decode greedily in batches: the one generation path of evaluation.

Answers and judge verdicts are both produced here, so both use the same chat encoding
(infosift.chat.prompt_ids) and the same deterministic decoding.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from infosift.chat import pad_id_of, prompt_ids
from infosift.device import pick_device


def load_causal_lm(
    model_dir: str,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    **load,
):
    """(model in eval mode on device, tokenizer), loaded through infosift.models.load_model_and_tokenizer.

    ``dtype=None`` is the generation default: float32 on CPU (bf16 matmuls are slow there), bfloat16 on
    CUDA (greedy decoding, lm-eval and the judge only need the argmax, and bf16 halves the memory); a name
    (params.yaml model.torch_dtype, ``auto`` the same default) is resolve_dtype's. ``load``: the rest of
    load_model_and_tokenizer's arguments a stage sets (attn_implementation, an adapter's base_dir).
    Scoring must pass ``torch.float32``: a short fine-tune moves weights by ~1e-4, a fraction of bf16's
    spacing, so bf16 rounds most of it away and shrinks the differences between fine-tunes.
    ``trust_remote_code``: the same consent finetune was given, so a model with custom code can be evaluated.
    """
    from infosift.models import load_model_and_tokenizer

    device = pick_device(device)
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    return load_model_and_tokenizer(model_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code, **load)


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding, so every row's last real token sits at the same position where decoding starts."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        attn[i, width - len(s) :] = 1
    return ids, attn


@torch.no_grad()
def greedy_chat(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    desc: str = "generate",
) -> list[str]:
    """Greedy replies to single-turn user prompts, rendered with the tokenizer's chat template."""
    pad_id = pad_id_of(tokenizer)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    out: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        rows = order[start : start + batch_size]
        ids, attn = _left_pad([encoded[i] for i in rows], pad_id)
        gen = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=attn.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
        for i, row in zip(rows, gen[:, ids.shape[1] :], strict=True):
            out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return out
