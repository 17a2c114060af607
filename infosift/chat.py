"""Chat-template encoding of one conversation with a mask of its assistant tokens.

Every step that feeds a model (embed, finetune, held-out NLL, self-scores, sketches) encodes records here,
so the tokens the selector saw are exactly the tokens the model is trained and scored on.

Which tokens are the assistant's: the whole conversation is rendered once; assistant turn k starts where the
conversation up to it, rendered with the generation header, stops matching the whole (the longest common
token prefix), and ends where the conversation through turn k, rendered alone, stops matching it (for the
last turn: at the end). So each span holds the turn's content and what the template closes it with (its
end-of-turn token). Where a template renders a prefix differently from the whole (one that moves the system
prompt into the last user turn), the span is held to its own turn by the tokens' character offsets
(``_SpanGuard``): never a token of another turn's content. A prompt/response pair is always the plain rule.

Truncation, the one rule: keep the first ``max_length`` tokens. Later turns are cut; an assistant turn that
straddles the cut keeps its tokens up to it; a conversation cut before its first assistant token has no token
to learn or score and is reported (``truncation_report``), never dropped without a count.

Text is cut before it is tokenized, so a 50 MB response costs max_length tokens, not 50 MB of tokenization: each
turn's content is first cut to ``char_bound(max_length)`` characters (CHARS_PER_TOKEN per token, with CUT_SLACK
tokens to spare; natural text averages about 4 characters a token). The cut is kept only if the text before the
first cut point still holds max_length + CUT_SLACK tokens, so the first max_length tokens are those of the whole
text (a tokenizer looks only a few tokens around a cut); otherwise the bound grows fourfold and the encoding is
tried again, at worst on the whole text. The ids and mask are the same as without the cut, for any text.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infosift.data import record_messages
from infosift.errors import DataError, ModelResolutionError

if TYPE_CHECKING:
    import torch


@dataclass
class Encoded:
    """input_ids of the conversation; response_mask[t] is True where token t belongs to an assistant turn.

    ``truncated``: the conversation had more than max_length tokens and its tail was cut.
    """

    input_ids: list[int]
    response_mask: list[bool]
    truncated: bool = False

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


def _render_text(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    return _tokens(tokenizer, _render_text(tokenizer, messages, add_generation_prompt))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of the user turn plus the assistant header: what generation starts from."""
    return _render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


CHARS_PER_TOKEN = 32  # generous: natural text and code average about 4 characters a token
CUT_SLACK = 64  # tokens past max_length a cut must leave, so that the tokens kept never see where it fell


def char_bound(max_length: int) -> int:
    """Characters of one turn's content read before tokenizing an encoding cut at ``max_length`` tokens."""
    return CHARS_PER_TOKEN * (max_length + CUT_SLACK)


def tokenize_head(tokenizer, text: str, n_tokens: int, **kwargs) -> dict:
    """``tokenizer(text, add_special_tokens=False, **kwargs)`` on a head of ``text`` that still holds n_tokens +
    CUT_SLACK tokens (the whole text when it is shorter): its first n_tokens are the whole text's."""
    bound = char_bound(n_tokens)
    while True:
        head = text[:bound]
        enc = tokenizer(head, add_special_tokens=False, **kwargs)
        if len(head) == len(text) or len(enc["input_ids"]) >= n_tokens + CUT_SLACK:
            return enc
        bound *= 4


def encode_messages(tokenizer, messages: list[dict], max_length: int | None = None, where: str = "") -> Encoded:
    """Encode a checked conversation (infosift.data.check_turns) under the chat template; see the module docstring.

    ``where`` names the conversation in errors. A template that fails on it, drops a turn's content or renders
    an assistant turn as no token is a DataError: its mask would be wrong without a sign.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ModelResolutionError("the tokenizer has no chat template; give the model one (a Jinja file)")
    where = where or "conversation"
    bound = None if max_length is None else char_bound(max_length)
    while bound is not None and any(len(m["content"]) > bound for m in messages):
        long = [len(m["content"]) > bound for m in messages]
        # a cut content ends without trailing whitespace: a template that trims contents must still render it whole
        cut = [dict(m, content=m["content"][:bound].rstrip()) if c else m for m, c in zip(messages, long, strict=True)]
        try:
            enc, kept = _encode(tokenizer, cut, max_length, where, long)
        except DataError:  # the cut itself may be what fails (a turn cut to whitespace): read more of it
            enc, kept = None, 0
        if enc is not None and kept >= max_length + CUT_SLACK:
            return enc
        bound *= 4
    return _encode(tokenizer, messages, max_length, where)[0]


def _encode(
    tokenizer, messages: list[dict], max_length: int | None, where: str, cut: list[bool] | None = None
) -> tuple[Encoded, int]:
    """encode_messages on these contents; with ``cut`` (which turns were cut), also the number of tokens of the
    rendering before the first cut point, the part of it that is the whole conversation's rendering too."""

    def render(turns: list[dict], add_generation_prompt: bool) -> str:
        try:
            return _render_text(tokenizer, turns, add_generation_prompt)
        except Exception as e:  # Jinja raises many types (syntax, undefined, raise_exception): all mean the same
            raise DataError(f"{where}: the chat template cannot render it ({type(e).__name__}: {_line(e)})") from None

    text = render(messages, False)
    spans, at = [], 0  # each turn's content, as a character span of the whole rendering, in order
    for n, m in enumerate(messages, start=1):
        system = m["role"] == "system"  # some templates put it elsewhere (into the last user turn): anywhere will do
        found = text.find(m["content"], 0 if system else at)
        if found < 0:
            raise DataError(f"{where}: the chat template drops the content of turn {n} ({m['role']})")
        spans.append((found, found + len(m["content"])))
        at = at if system else spans[-1][1]
    pair = [m["role"] for m in messages] == ["user", "assistant"]
    guard = None
    if pair or not getattr(tokenizer, "is_fast", False):
        full = _tokens(tokenizer, text)
    else:  # character offsets let each span be checked against the turns around it
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        full, guard = list(enc["input_ids"]), _SpanGuard(text, spans, enc["offset_mapping"])
    mask = [False] * len(full)
    last, done = len(messages) - 1, 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _common_prefix(_tokens(tokenizer, render(messages[:i], True)), full)
        through = "" if i == last else render(messages[: i + 1], False)
        end = len(full) if i == last else _common_prefix(_tokens(tokenizer, through), full)
        if guard is not None:
            start, end = guard.span(i, start, end, through)
        start = max(start, done)
        if end <= start:
            raise DataError(f"{where}: the chat template renders assistant turn {i + 1} as no token of the whole")
        mask[start:end] = [True] * (end - start)
        done = end
    kept = 0
    if cut is not None and any(cut):
        kept = len(_tokens(tokenizer, text[: min(end for (_, end), c in zip(spans, cut, strict=True) if c)]))
    truncated = max_length is not None and len(full) > max_length
    if truncated:
        full, mask = full[:max_length], mask[:max_length]
    return Encoded(full, mask, truncated), kept


class _SpanGuard:
    """Keeps an assistant span found by prefix renderings inside its own turn, by the character offsets of tokens.

    A template that renders a prefix of the conversation differently from the whole (one that moves the system
    prompt into the last user turn, say) makes the common prefix stop in an earlier turn. Then the span falls
    back to the turn's own text: from its content's first token, through the text that closes the turn when it
    is rendered last (its end-of-turn token), never into the next turn's content.
    """

    def __init__(self, text: str, spans: list[tuple[int, int]], offsets) -> None:
        self.text, self.spans = text, spans
        self.starts = [int(a) for a, _ in offsets]
        self.ends = [int(b) for _, b in offsets]

    def after(self, c: int) -> int:
        """The first token that ends after character c (the token holding c, or the next one)."""
        return bisect.bisect_right(self.ends, c)

    def from_(self, c: int) -> int:
        """The first token that starts at or after character c."""
        return bisect.bisect_left(self.starts, c)

    def span(self, i: int, start: int, end: int, through: str) -> tuple[int, int]:
        """(start, end) of assistant turn i, the prefix-found one where it lies in the turn, else the fallback.

        ``through``: the conversation through turn i rendered alone ("" when turn i is the last).
        """
        cs, ce = self.spans[i]
        first = self.after(cs)
        if not self.after(self.spans[i - 1][1]) <= start <= first:
            start = first
        if not through:  # the last turn runs to the end, as a prompt/response pair's does
            return start, end
        covered, limit = self.from_(ce), self.after(self.spans[i + 1][0])
        if not covered <= end <= limit:
            at = through.rfind(self.text[cs:ce])
            closing = through[at + ce - cs :] if at >= 0 else ""
            n = 0
            while n < len(closing) and ce + n < len(self.text) and closing[n] == self.text[ce + n]:
                n += 1
            end = min(max(self.from_(ce + n), covered), limit)
        return start, end


def encode_record(tokenizer, rec: dict, max_length: int | None = None) -> Encoded:
    """The whole conversation of a record (infosift.data.record_messages), its assistant turns masked.

    A prompt/response record gives exactly the tokens and mask it always had: [user, assistant] rendered, the
    response span being everything after the prompt rendered with the generation header.
    """
    return encode_messages(tokenizer, record_messages(rec), max_length, f"record {rec.get('id', '?')}")


def encode_pair(tokenizer, prompt: str, response: str, max_length: int | None = None) -> Encoded:
    """Encode user prompt + assistant response (a two-turn encode_record)."""
    return encode_record(tokenizer, {"prompt": prompt, "response": response}, max_length)


def truncation_report(encoded: Sequence[Encoded], ids: Sequence[str]) -> dict:
    """How many examples max_length cut, and which ones it left without an assistant token.

    {"examples", "truncated" (tail cut), "emptied" (cut before the first assistant token: nothing to learn or
    score), "emptied_ids"}: what a manifest or a log records, so that no example is lost without a count.
    """
    emptied = [str(i) for e, i in zip(encoded, ids, strict=True) if e.n_response == 0]
    return {
        "examples": len(encoded),
        "truncated": sum(e.truncated for e in encoded),
        "emptied": len(emptied),
        "emptied_ids": emptied,
    }


# a conversation every chat template must render with each turn's content kept
PROBE = [
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
    {"role": "assistant", "content": "second answer"},
]


def ensure_chat_template(tokenizer, template_path: str | Path | None = None) -> None:
    """Give ``tokenizer`` the Jinja chat template in ``template_path`` (for a model that has none), and check it.

    Without a file the tokenizer's own template is checked. No template at all, an unreadable file, or a template
    that fails on a two-exchange conversation or loses a turn's content is one ModelResolutionError. (System
    prompts are checked per record at encoding: some templates refuse them, and data without them never asks.)
    """
    if template_path is not None:
        path = Path(template_path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ModelResolutionError(f"{path}: chat template file not found") from None
        except UnicodeDecodeError as e:
            raise ModelResolutionError(f"{path}: chat template is not UTF-8 (byte {e.start})") from None
        if not text.strip():
            raise ModelResolutionError(f"{path}: chat template file is empty")
        tokenizer.chat_template = text
        where = f"chat template {path}"
    elif not getattr(tokenizer, "chat_template", None):
        raise ModelResolutionError(
            "the model has no chat template and none was given; name a Jinja file (model.chat_template)"
        )
    else:
        where = "the model's chat template"
    try:
        encode_messages(tokenizer, PROBE, where="a two-exchange conversation")
    except DataError as e:
        raise ModelResolutionError(f"{where}: {e}") from None


def _line(e: BaseException) -> str:
    """An exception's message on one line, kept short."""
    return " ".join(str(e).split())[:200]
