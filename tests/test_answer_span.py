"""Answer-span masks: the regex span by hand, char span -> token mask via offsets, the tiny chat tokenizer."""

from __future__ import annotations

import re

import pytest

from infosift.chat import encode_pair
from infosift.errors import DataError
from infosift.evaluate.answer_span import (
    answer_char_span,
    answer_encoding,
    answer_encodings,
    compile_pattern,
    overlap_mask,
)
from tests.tiny import build_tokenizer


def test_answer_char_span_takes_the_last_match_and_its_group():
    text = "a #### 3\nb = 4\n#### 45"
    whole, group = compile_pattern(r"####.*"), compile_pattern(r"#### (\d+)")
    assert answer_char_span(text, whole) == (15, 22) and text[15:22] == "#### 45"
    assert answer_char_span(text, group) == (20, 22) and text[20:22] == "45"
    assert answer_char_span(text, compile_pattern(r"^#### \d+$")) == (15, 22)  # multi-line: $ at a line's end
    assert answer_char_span("no answer here", whole) is None
    assert answer_char_span("#### ", compile_pattern(r"#### (\d*)")) is None  # an empty span is no answer
    for bad in ("", "(unclosed", None):
        with pytest.raises(DataError, match="answer_pattern"):
            compile_pattern(bad)


def test_overlap_mask_by_hand():
    offsets = [(0, 3), (3, 3), (4, 8), (8, 10), (11, 12)]
    assert overlap_mask(offsets, (4, 10)) == [False, False, True, True, False]
    assert overlap_mask(offsets, (5, 6)) == [False, False, True, False, False]  # inside one token: that token
    assert overlap_mask(offsets, (2, 5)) == [True, False, True, False, False]  # straddling edges are in
    assert overlap_mask(offsets, (10, 11)) == [False] * 5


@pytest.mark.parametrize("pattern,want", [(r"####.*", ["####", "{n}"]), (r"#### (\d+)", ["{n}"])])
def test_answer_tokens_on_the_tiny_chat_tokenizer(gsm_records, pattern, want):
    tok = build_tokenizer()
    for r in gsm_records[:6]:
        n = r["response"].rsplit("#### ", 1)[1]
        enc = encode_pair(tok, r["prompt"], r["response"])
        ans = answer_encoding(tok, r["prompt"], r["response"], compile_pattern(pattern))
        assert ans.input_ids == enc.input_ids
        chosen = [t for t, m in zip(ans.input_ids, ans.response_mask, strict=True) if m]
        assert tok.convert_ids_to_tokens(chosen) == [w.format(n=n) for w in want]
        assert all(r for m, r in zip(ans.response_mask, enc.response_mask, strict=True) if m)  # never the prompt
        first = ans.response_mask.index(True)
        assert tok.convert_ids_to_tokens(enc.input_ids[first + len(want)]) == "<|end|>"  # it ends the response


def test_an_answer_also_in_the_prompt_is_found_in_the_response():
    tok = build_tokenizer()
    prompt, response = "what is 3 plus 4 ? #### 7", "3 plus 4 = 7 . #### 7"
    ans = answer_encoding(tok, prompt, response, compile_pattern(r"####.*"))
    enc = encode_pair(tok, prompt, response)
    idx = [i for i, m in enumerate(ans.response_mask) if m]
    assert len(idx) == 2 and all(enc.response_mask[i] for i in idx)


def test_truncation_and_patterns_that_match_nothing(gsm_records):
    tok = build_tokenizer()
    records = gsm_records[:5]
    full = answer_encodings(tok, records, r"####.*")
    assert all(e.n_response == 2 for e in full)
    short = len(encode_pair(tok, records[0]["prompt"], records[0]["response"]).input_ids) - 3
    cut = answer_encodings(tok, records[:1] + [{"prompt": "how many ?", "response": "#### 5"}], r"####.*", short)
    assert cut[0].n_response == 0 and cut[1].n_response == 2  # the first lost its answer to max_length
    assert len(cut[0].input_ids) == short
    with pytest.raises(DataError, match=re.escape("answer_pattern 'ANSWER:.*' finds no answer token in the 5")):
        answer_encodings(tok, records, r"ANSWER:.*")
    with pytest.raises(DataError, match="no match, or max_length cut every answer"):
        answer_encodings(tok, records[:1], r"####.*", short)
    mixed = answer_encodings(tok, records[:2] + [{"prompt": "how many ?", "response": "tom has 3 ."}], r"####.*")
    assert [e.n_response for e in mixed] == [2, 2, 0]  # a response without an answer scores no answer token
