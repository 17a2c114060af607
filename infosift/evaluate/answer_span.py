"""Answer-span masks: which response tokens hold the answer, so NLL can be scored on them alone.

Held-out NLL over the whole response mostly measures the answer *format* a short fine-tune picks up;
where a dataset defines its answer (``evaluate.answer_pattern``, a regular expression; GSM8K: the final
``#### n`` line, e.g. ``####.*``), NLL on the answer tokens alone shows a difference in content that the
format tokens would hide.

The span: the LAST match of the pattern in the response text (answers come last); the span of its
first group when the pattern has groups (``#### (.*)``: the number only), else the whole match; an empty
span counts as no match. The tokens: render the conversation under the chat template as
chat.encode_pair does, tokenize it with character offsets, find the response in the rendered text, and
mask every token whose characters overlap the answer's (a token straddling the span's edge is in).
The ids are checked against encode_pair's, so the mask lines up with what the NLL scores; the mask is
also cut to the response (never a prompt token) and to truncation (``max_length``); only the head of the text
that truncation keeps is tokenized (chat.tokenize_head), so a huge response costs max_length tokens.
"""

from __future__ import annotations

import re

from infosift.chat import Encoded, encode_pair, tokenize_head
from infosift.errors import DataError


def compile_pattern(pattern: str) -> re.Pattern:
    """The compiled answer pattern (multi-line: ``^``/``$`` match at line ends), or a DataError naming it."""
    if not isinstance(pattern, str) or not pattern:
        raise DataError(f"answer_pattern must be a non-empty regular expression, got {pattern!r}")
    try:
        return re.compile(pattern, re.MULTILINE)
    except re.error as e:
        raise DataError(f"answer_pattern {pattern!r} is not a regular expression: {e}") from None


def answer_char_span(text: str, pattern: re.Pattern) -> tuple[int, int] | None:
    """(start, end) characters of the answer in ``text``: the last match (its group 1 if any), None if none."""
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - the last match is the one kept
        pass
    if last is None:
        return None
    start, end = last.span(1) if pattern.groups else last.span()
    return (start, end) if end > start else None


def overlap_mask(offsets: list[tuple[int, int]], span: tuple[int, int]) -> list[bool]:
    """Per token: do its characters [s, e) overlap ``span`` [a, b)? Zero-width tokens never do."""
    a, b = span
    return [e > s and s < b and e > a for s, e in offsets]


def answer_encoding(
    tokenizer, prompt: str, response: str, pattern: re.Pattern, max_length: int | None = None
) -> Encoded:
    """encode_pair's ids with ``response_mask`` replaced by the answer tokens' mask (all False: no answer)."""
    enc = encode_pair(tokenizer, prompt, response, max_length)
    span = answer_char_span(response, pattern)
    if span is None:
        return Encoded(enc.input_ids, [False] * len(enc.input_ids))
    user = {"role": "user", "content": prompt}
    head = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(
        [user, {"role": "assistant", "content": response}], tokenize=False, add_generation_prompt=False
    )
    tok = tokenize_head(tokenizer, text, len(enc.input_ids), return_offsets_mapping=True)  # what the NLL scores
    if list(tok["input_ids"][: len(enc.input_ids)]) != list(enc.input_ids):
        raise DataError("answer span: the chat encoding is not the tokenized template text; cannot align the answer")
    prefix = next((i for i, (x, y) in enumerate(zip(head, text, strict=False)) if x != y), min(len(head), len(text)))
    answer = response[span[0] : span[1]]
    start = text.find(response, prefix)
    if start >= 0:
        chars = (start + span[0], start + span[1])
    else:  # the template altered the response (e.g. trimmed it): find the answer itself, the last occurrence
        at = text.rfind(answer, prefix)
        if at < 0:
            return Encoded(enc.input_ids, [False] * len(enc.input_ids))
        chars = (at, at + len(answer))
    mask = overlap_mask([tuple(o) for o in tok["offset_mapping"][: len(enc.input_ids)]], chars)
    return Encoded(enc.input_ids, [m and r for m, r in zip(mask, enc.response_mask, strict=True)])


def answer_encodings(tokenizer, records: list[dict], pattern: str, max_length: int | None = None) -> list[Encoded]:
    """answer_encoding of each record ({prompt, response}); a pattern that finds no answer anywhere is an error."""
    compiled = compile_pattern(pattern)
    out = [answer_encoding(tokenizer, r["prompt"], r["response"], compiled, max_length) for r in records]
    if records and not any(e.n_response for e in out):
        raise DataError(
            f"answer_pattern {pattern!r} finds no answer token in the {len(records)} responses scored "
            "(no match, or max_length cut every answer) "
            f"(first response: {records[0]['response'][:80]!r})"
        )
    return out
