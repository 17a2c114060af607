"""Quality scores of a pool, from the base model, written once at embed: does the response fit its prompt?

Loss-seeking selectors pick noisy examples (RHO-LOSS, arXiv 2206.07137); filters that test whether a
response fits its prompt remove them (IFD, arXiv 2308.12032; Superfiltering, arXiv 2402.00530). Two scores,
higher is better, each from forward passes of the base model under the chat template (chat.encode_pair at
embed's ``max_length``: the text is cut before it is tokenized, so one huge response costs max_length tokens):

- ``pmi`` = log p(r | q) - log p(r | q'), both summed over the response tokens (the assistant turn as the
  fine-tune trains on it, end-of-turn marker included), q' the prompt of another pool example chosen by a
  seeded derangement (``partner_prompts``). How much the prompt raises the response's likelihood: a
  response swapped in from another question gains nothing from its prompt (pmi near or below 0).
- ``eos`` = p(end-of-turn | q, r): the model's probability of the tokenizer's EOS token at the position
  where the template ends the assistant turn (the first EOS of the response span), given the whole
  response before it. A response cut short is unlikely to end there.

A conversation longer than ``max_length`` is scored on what fits, as the fine-tune trains on it: ``pmi`` sums
the response tokens both encodings kept (the partner's prompt may be longer or shorter than its own), and
``eos`` is 0 when the turn's end falls past the cut (the fine-tune would see it end nowhere).

Saved as one ``.npz`` (ids, pmi, eos, partner, logp, logp_other) beside the pool's features; ``load_quality``
reads it back in the pool's id order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from infosift.atomic import atomic_output
from infosift.chat import Encoded, collate, encode_pair
from infosift.errors import DataError, FeaturesError, ModelResolutionError

SCORES = ("pmi", "eos")
ARRAYS = ("pmi", "eos", "partner", "logp", "logp_other")


def partner_prompts(n: int, seed: int) -> np.ndarray:
    """(n,) index of the other prompt each example is scored against: a seeded derangement (never itself).

    A random cyclic order: example perm[j] takes the prompt of perm[j + 1].
    """
    if n < 2:
        raise DataError(f"pmi needs at least two examples (another prompt to compare with), got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[perm] = np.roll(perm, -1)
    return partner


def eos_position(enc: Encoded, eos_id: int) -> int | None:
    """Index t of the first EOS token inside the response span: where the template closes the turn (None when
    max_length cut the encoding before it)."""
    for t, (tok, resp) in enumerate(zip(enc.input_ids, enc.response_mask, strict=True)):
        if resp and tok == eos_id and t > 0:
            return t
    if enc.truncated:
        return None
    raise ModelResolutionError("the chat template writes no EOS token after the response, so 'eos' is undefined")


def response_logprobs(
    model, encs: list[Encoded], eos_id: int, batch_tokens: int = 4096
) -> tuple[list[np.ndarray], np.ndarray]:
    """(log p of each response token, float64 per pair; p(EOS) where the turn ends, (N,), 0 past a cut).

    Response token t (response_mask[t], t >= 1) is predicted at position t - 1; the head runs only on those rows.
    """
    import torch

    from infosift.embed import length_batches
    from infosift.models import autocast

    device = next(model.parameters()).device
    head, mixed = model.get_output_embeddings(), autocast(device)[0]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else eos_id
    logps, p_eos = [np.zeros(0)] * len(encs), np.zeros(len(encs))
    for batch in length_batches([len(e.input_ids) for e in encs], batch_tokens):
        padded = collate([encs[i] for i in batch], pad)
        ids = padded["input_ids"].to(device)
        with torch.inference_mode(), mixed:
            attn = padded["attention_mask"].to(device)
            hidden = model.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
            for row, i in enumerate(batch):
                targets = np.flatnonzero(np.asarray(encs[i].response_mask[1:], dtype=bool)) + 1
                end = eos_position(encs[i], eos_id)
                pos = torch.as_tensor(targets - 1, device=device)
                logp = torch.log_softmax(head(hidden[row, pos]).float(), dim=-1)
                logps[i] = logp.gather(1, ids[row, pos + 1][:, None])[:, 0].double().cpu().numpy()
                if end is not None:
                    p_eos[i] = logp[int(np.flatnonzero(targets == end)[0]), eos_id].exp().item()
    return logps, p_eos


def from_token_stats(enc: Encoded, p_next: np.ndarray, eos_id: int) -> tuple[np.ndarray, float] | None:
    """(log p of each response token, p(EOS)) read off embed's ``p_next`` of the example's response rows; None
    when those rows are not this encoding's (embed cut at another length: other rows) or a p underflowed to 0."""
    targets = np.flatnonzero(np.asarray(enc.response_mask[1:], dtype=bool)) + 1
    p = np.asarray(p_next, dtype=np.float64)
    if len(p) != len(targets) or not np.all(p > 0):
        return None
    end = eos_position(enc, eos_id)
    return np.log(p), 0.0 if end is None else float(p[np.flatnonzero(targets == end)[0]])


def quality_scores(
    model,
    tokenizer,
    records: list[dict],
    seed: int = 0,
    batch_tokens: int = 4096,
    response_p_next: list[np.ndarray] | None = None,
    max_length: int | None = None,
) -> dict:
    """pmi, eos (the scores) and partner, logp, logp_other (how pmi was made) of ``records``, each (N,).

    ``response_p_next``: per record, embed's ``p_next`` over its response rows (``embed.part: response``);
    log p(r | q) and eos are then read off them instead of a second forward pass, wherever they cover the
    whole response. Only log p(r | q') always needs the model. ``max_length``: embed's, where each encoding is
    cut (None: never cut, for text known to be short).
    """
    partner = partner_prompts(len(records), seed)
    own = [encode_pair(tokenizer, r["prompt"], r["response"], max_length) for r in records]
    other = [
        encode_pair(tokenizer, records[j]["prompt"], r["response"], max_length)
        for r, j in zip(records, partner, strict=True)
    ]
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ModelResolutionError("the tokenizer has no EOS token, so 'eos' is undefined")
    own_tokens, eos, todo = [np.zeros(0)] * len(records), np.zeros(len(records)), []
    for i, enc in enumerate(own):
        got = None if response_p_next is None else from_token_stats(enc, response_p_next[i], eos_id)
        if got is None:
            todo.append(i)
        else:
            own_tokens[i], eos[i] = got
    if todo:
        scored, eos[todo] = response_logprobs(model, [own[i] for i in todo], eos_id, batch_tokens)
        for i, lp in zip(todo, scored, strict=True):
            own_tokens[i] = lp
    other_tokens, _ = response_logprobs(model, other, eos_id, batch_tokens)
    kept = [min(len(a), len(b)) for a, b in zip(own_tokens, other_tokens, strict=True)]  # both saw these tokens
    logp = np.array([a[:k].sum() for a, k in zip(own_tokens, kept, strict=True)])
    logp_other = np.array([b[:k].sum() for b, k in zip(other_tokens, kept, strict=True)])
    return {"pmi": logp - logp_other, "eos": eos, "partner": partner, "logp": logp, "logp_other": logp_other}


def save_quality(path: str | os.PathLike, ids: list[str], scores: dict) -> None:
    """One .npz with the ids and every array of ``quality_scores``, written atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=np.asarray(ids, dtype=str), **{k: np.asarray(scores[k]) for k in ARRAYS})


def load_quality(path: str | os.PathLike, ids: list[str]) -> dict[str, np.ndarray]:
    """The scores of ``path`` in the order of ``ids`` (the pool's features); a file for other ids is an error."""
    src = Path(path)
    if not src.exists():
        raise FeaturesError(f"{src} missing; rerun embed (it writes the quality scores a filter reads)")
    try:
        with np.load(src, allow_pickle=False) as z:
            saved, arrays = [str(i) for i in z["ids"]], {k: np.asarray(z[k]) for k in ARRAYS}
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise FeaturesError(f"{src}: unreadable quality scores ({' '.join(str(e).split())}); rerun embed") from None
    if saved != list(ids):
        raise FeaturesError(f"{src} scores other examples than the pool's features; rerun embed")
    return arrays
