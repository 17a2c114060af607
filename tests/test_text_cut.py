"""Text is cut before it is tokenized: a huge turn costs max_length tokens, and every encoding stays the one the
whole text gives (ids, assistant mask, truncated flag), cut or not."""

from __future__ import annotations

import pytest

from infosift.chat import CUT_SLACK, Encoded, char_bound, encode_messages, encode_record
from infosift.evaluate.answer_span import answer_encoding, compile_pattern
from tests.test_conversations import HEADERS, INST, LAST_SYSTEM, word_tokenizer
from tests.tiny import build_tokenizer

TRIM = (  # a template that trims each content, as many do: a cut must not end in whitespace it would drop
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] | trim }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
TEMPLATES = {"headers": HEADERS, "inst": INST, "last-system": LAST_SYSTEM, "trim": TRIM}


@pytest.fixture
def longest_text(monkeypatch):
    """Records the longest text the tokenizer class is asked to tokenize (every tokenizer built in the test)."""
    from transformers import PreTrainedTokenizerFast

    seen = {"chars": 0}
    call = PreTrainedTokenizerFast.__call__

    def spy(self, text, *args, **kwargs):
        seen["chars"] = max(seen["chars"], len(text) if isinstance(text, str) else max(map(len, text)))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", spy)
    return seen


def whole_then_cut(tok, messages: list[dict], max_length: int) -> Encoded:
    """The encoding as it was: the whole conversation tokenized, then its first max_length tokens kept."""
    whole = encode_messages(tok, messages)
    ids, mask = whole.input_ids[:max_length], whole.response_mask[:max_length]
    return Encoded(ids, mask, len(whole.input_ids) > max_length)


def test_a_20_mb_response_is_tokenized_as_max_length_tokens_and_gives_the_hand_cut_ids(longest_text):
    tok = build_tokenizer()
    prompt, sentence = "tom has 5 apples . how many apples does tom have ?", "tom has 5 apples and 3 boxes . "
    huge = sentence * (20 * 2**20 // len(sentence))
    assert len(huge) > 20 * 10**6
    hand = huge[:2000]  # cut by hand, still far more than max_length tokens
    got = encode_record(tok, {"id": "huge", "prompt": prompt, "response": huge}, 64)
    assert longest_text["chars"] < 3 * char_bound(64), longest_text  # never the 20 MB
    want = encode_record(tok, {"id": "hand", "prompt": prompt, "response": hand}, 64)
    assert got == want and got.truncated and len(got.input_ids) == 64 and got.n_response > 0


def long_turns(where: str, words: str, n: int) -> list[dict]:
    """A two-exchange conversation with a system prompt whose ``where`` turn(s) repeat ``words`` n times."""
    msgs = [
        {"role": "system", "content": "you are terse ."},
        {"role": "user", "content": "what is 2 plus 3 ?"},
        {"role": "assistant", "content": "2 plus 3 is 5 ."},
        {"role": "user", "content": "and 5 minus 1 ?"},
        {"role": "assistant", "content": "it is 4 ."},
    ]
    for m in msgs:
        if where == "all" or m["role"] == where or (where == "first-user" and m is msgs[1]):
            m["content"] = " ".join([m["content"]] + [words] * n)
    return msgs


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("where", ["system", "first-user", "assistant", "all"])
@pytest.mark.parametrize("max_length", [3, 12, 40, 200])
def test_a_cut_conversation_encodes_as_the_whole_one_truncated(name, where, max_length, longest_text):
    tok = word_tokenizer(TEMPLATES[name])
    msgs = long_turns(where, "it is 4 .", 2000)  # 19 KB a long turn: more than char_bound of these max_length
    assert max(len(m["content"]) for m in msgs) > char_bound(max_length)
    got = encode_messages(tok, msgs, max_length)
    seen = longest_text["chars"]
    assert got == whole_then_cut(tok, msgs, max_length)
    assert seen < sum(min(len(m["content"]), 2 * char_bound(max_length)) for m in msgs) + 1000, seen


@pytest.mark.parametrize("max_length", [3, 40])
def test_text_with_few_tokens_per_character_reads_on_until_it_holds_enough(max_length):
    """A turn of a few very long 'words' (one token each) leaves too few tokens before any cut the bound allows:
    the bound grows until it does, and the encoding is still the whole one's."""
    tok = word_tokenizer(HEADERS)
    blob = " ".join("x" * 3000 for _ in range(3 * (max_length + CUT_SLACK)))
    msgs = [{"role": "user", "content": "what is 2 plus 3 ?"}, {"role": "assistant", "content": blob}]
    assert encode_messages(tok, msgs, max_length) == whole_then_cut(tok, msgs, max_length)
    spaced = [{"role": "user", "content": " " * (2 * char_bound(max_length)) + "first"}, msgs[1]]  # cut to ""
    assert encode_messages(tok, spaced, max_length) == whole_then_cut(tok, spaced, max_length)


def test_short_records_are_never_cut(longest_text):
    tok = build_tokenizer()
    rec = {"id": "p", "prompt": "what is 2 plus 3 ?", "response": "2 plus 3 = 5 . #### 5"}
    for max_length in (None, 4, 512):
        enc = encode_record(tok, rec, max_length)
        whole = encode_record(tok, rec)
        n = len(whole.input_ids) if max_length is None else max_length
        assert enc == Encoded(whole.input_ids[:n], whole.response_mask[:n], len(whole.input_ids) > n)


def test_the_answer_span_tokenizes_only_what_max_length_keeps(longest_text):
    tok = build_tokenizer()
    prompt, pattern = "what is 2 plus 3 ?", compile_pattern(r"#### (\d+)")
    response = "2 plus 3 = 5 . #### 5 " + "tom has 5 apples . " * 2000  # the answer early, 38 KB after it
    for max_length in (4, 12, 30):
        whole = answer_encoding(tok, prompt, response, pattern)
        longest_text["chars"] = 0
        got = answer_encoding(tok, prompt, response, pattern, max_length)
        assert longest_text["chars"] < len(response) / 4
        assert got.input_ids == whole.input_ids[:max_length]
        assert got.response_mask == whole.response_mask[:max_length]
    assert answer_encoding(tok, prompt, response, pattern, 30).n_response == 1  # the 5 after ####, kept
