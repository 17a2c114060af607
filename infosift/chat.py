"""Chat-template encoding of one (prompt, response) pair with a mask of the response tokens.

Every step that feeds a model (embed, finetune, held-out NLL, self-scores) encodes examples here,
so the tokens the selector saw are exactly the tokens the model is trained and scored on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Encoded:
    """input_ids of the full conversation; response_mask[t] is True where token t is a response token."""

    input_ids: list[int]
    response_mask: list[bool]

    @property
    def n_response(self) -> int:
        return int(sum(self.response_mask))


def pad_id_of(tokenizer) -> int:
    """The id that fills padding: the tokenizer's pad token, else its EOS (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask (1 on real tokens) and response_mask (padding and prompt 0).

    The one right padding of the library (embed, finetune, held-out NLL, sketch); generation pads on the
    left instead (evaluate/hf.py), so that every row's last prompt token sits where decoding starts.
    """
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    resp = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attn[row, :n] = 1
        resp[row, :n] = torch.tensor(e.response_mask)
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of the user turn plus the assistant header: what generation starts from."""
    return _render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def encode_pair(tokenizer, prompt: str, response: str, max_length: int | None = None) -> Encoded:
    """Encode user prompt + assistant response; the response span is what follows the prompt prefix.

    The prompt part is rendered with the generation header, so it is a prefix of the full
    conversation for ordinary templates; where a template breaks that, the longest common
    prefix is taken as the prompt. Truncation keeps the prompt and cuts the response's tail.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("tokenizer has no chat template; infosift encodes examples as chat turns")
    head = prompt_ids(tokenizer, prompt)
    full = _render(
        tokenizer,
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        add_generation_prompt=False,
    )
    n_prompt = 0
    for a, b in zip(head, full, strict=False):
        if a != b:
            break
        n_prompt += 1
    if max_length is not None and len(full) > max_length:
        full = full[:max_length]
    mask = [t >= n_prompt for t in range(len(full))]
    return Encoded(full, mask)


def encode_record(tokenizer, rec: dict, max_length: int | None = None) -> Encoded:
    """Placeholder until whole conversations land: a record's (prompt, response) pair."""
    enc = encode_pair(tokenizer, rec["prompt"], rec["response"], max_length)
    enc.truncated = max_length is not None and len(enc.input_ids) >= max_length
    return enc
