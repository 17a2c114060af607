"""Whole conversations: every source layout gives the same record, two-turn records keep their ids and tokens,
masks cover exactly the assistant turns under two templates, truncation is counted, bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from infosift.chat import encode_record, ensure_chat_template, prompt_ids, truncation_report
from infosift.contaminate import contaminate
from infosift.data import (
    DataError,
    conversation_id,
    dataset_spec,
    load_file,
    normalize_text,
    read_examples,
    record_id,
    record_messages,
)
from infosift.errors import ModelResolutionError
from tests.test_stage_errors import assert_one_error_line, run_stage, setup_download
from tests.tiny import build_tokenizer, gsm_rows

# Two templates of the two families in use: role headers with an end-of-turn token (system as its own turn),
# and Llama-2's [INST] blocks (system folded into the first user turn, no generation header).
HEADERS = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
INST = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if m['role'] == 'user' %}<s> [INST] "
    "{% if loop.first and system %}<<SYS>> {{ system }} <</SYS>> {% endif %}{{ m['content'] }} [/INST] "
    "{% else %}{{ m['content'] }} </s> {% endif %}{% endfor %}"
)
# and one that renders a prefix unlike the whole: the system prompt goes into the LAST user turn (as Mistral's)
LAST_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% set ns = namespace(last=0) %}{% for m in turns %}{% if m['role'] == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in turns %}{% if m['role'] == 'user' %}[INST] {% if loop.index0 == ns.last and system %}"
    "{{ system }} {% endif %}{{ m['content'] }} [/INST] {% else %}{{ m['content'] }} </s> {% endif %}{% endfor %}"
)
# where an assistant turn opens and closes in each template's tokens
MARKS = {
    "headers": (HEADERS, "<|assistant|>", "<|end|>"),
    "inst": (INST, "[/INST]", "</s>"),
    "last-system": (LAST_SYSTEM, "[/INST]", "</s>"),
}

SYSTEM = "you are terse ."
EXCHANGES = [
    ("what is 2 plus 3 ?", "2 plus 3 is 5 ."),
    ("and 5 minus 1 ?", "it is 4 ."),
    ("how many apples now ?", "4 apples in all ."),
]
SPECIALS = ["[UNK]", "[PAD]", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
SPECIALS += ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]


def word_tokenizer(template: str):
    """A whitespace WordLevel tokenizer covering SPECIALS and the words of this file's conversations."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [w for q, a in EXCHANGES for w in f"{q} {a}".split()] + SYSTEM.split() + ["first", "second", "x"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIALS + words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    fast.chat_template = template
    return fast


def conversation(n: int, system: bool) -> list[dict]:
    turns = [{"role": "system", "content": SYSTEM}] if system else []
    for q, a in EXCHANGES[:n]:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return turns


def structural_mask(tok, ids: list[int], opens: str, closes: str) -> list[bool]:
    """True from the token after each ``opens`` through the next ``closes``: the assistant turns, read from the
    template's own markers (independent of how encode_record finds them)."""
    o, c = tok.convert_tokens_to_ids(opens), tok.convert_tokens_to_ids(closes)
    mask, inside = [], False
    for t in ids:
        mask.append(inside)
        if t == o:
            inside = True
        elif t == c:
            inside = False
    return mask


def todays_encode_pair(tok, prompt: str, response: str, max_length: int | None) -> tuple[list[int], list[bool]]:
    """The two-turn encoding infosift always had: the response is what follows the prompt's generation prefix."""
    head = prompt_ids(tok, prompt)
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
    )
    full = list(tok(text, add_special_tokens=False)["input_ids"])
    n = next((i for i, (a, b) in enumerate(zip(head, full, strict=False)) if a != b), min(len(head), len(full)))
    full = full if max_length is None else full[:max_length]
    return full, [t >= n for t in range(len(full))]


# -- masks ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MARKS))
@pytest.mark.parametrize(("n", "system"), [(1, False), (1, True), (2, False), (3, True)])
def test_mask_covers_exactly_the_assistant_turns(name, n, system):
    template, opens, closes = MARKS[name]
    tok = word_tokenizer(template)
    messages = conversation(n, system)
    enc = encode_record(tok, {"id": "c", "messages": messages, "prompt": "", "response": ""})
    assert enc.response_mask == structural_mask(tok, enc.input_ids, opens, closes)
    # and the masked tokens read back as each assistant turn's content and its end-of-turn token, in order
    masked = tok.convert_ids_to_tokens([t for t, m in zip(enc.input_ids, enc.response_mask, strict=True) if m])
    want = [w for m in messages if m["role"] == "assistant" for w in [*m["content"].split(), closes]]
    assert masked == want
    assert not enc.truncated
    if system:  # the system prompt is rendered, and none of it is learned
        text = " ".join(tok.convert_ids_to_tokens(enc.input_ids))
        assert SYSTEM in text


@pytest.mark.parametrize("name", sorted(MARKS))
@pytest.mark.parametrize("max_length", [None, 12, 5])
def test_two_turn_encoding_is_todays(name, max_length):
    tok = word_tokenizer(MARKS[name][0])
    for q, a in EXCHANGES:
        enc = encode_record(tok, {"id": "p", "prompt": q, "response": a}, max_length)
        assert (enc.input_ids, enc.response_mask) == todays_encode_pair(tok, q, a, max_length)


def test_two_turn_encoding_of_gsm_rows_is_todays():
    tok = build_tokenizer()
    for row in gsm_rows(20, seed=3):
        for max_length in (None, 20):
            enc = encode_record(tok, {"id": "g", "prompt": row["question"], "response": row["answer"]}, max_length)
            assert (enc.input_ids, enc.response_mask) == todays_encode_pair(
                tok, row["question"], row["answer"], max_length
            )


# -- truncation ----------------------------------------------------------------------------------------------
def test_truncation_keeps_the_head_and_is_counted():
    tok = word_tokenizer(HEADERS)
    rec = {"id": "long", "messages": conversation(2, True), "prompt": "", "response": ""}
    whole = encode_record(tok, rec)
    starts = [
        i for i in range(1, len(whole.response_mask)) if whole.response_mask[i] and not whole.response_mask[i - 1]
    ]
    assert len(starts) == 2
    mid_second = starts[1] + 2  # inside the second assistant turn
    cut = encode_record(tok, rec, mid_second)
    assert cut.truncated and cut.input_ids == whole.input_ids[:mid_second]
    assert cut.response_mask == whole.response_mask[:mid_second]
    assert 0 < cut.n_response < whole.n_response
    emptied = encode_record(tok, {**rec, "id": "emptied"}, starts[0])  # cut right before the first assistant token
    assert emptied.truncated and emptied.n_response == 0
    exact = encode_record(tok, rec, len(whole.input_ids))
    assert not exact.truncated and exact == whole
    report = truncation_report([whole, cut, emptied, exact], ["a", "b", "c", "d"])
    assert report == {"examples": 4, "truncated": 2, "emptied": 1, "emptied_ids": ["c"]}


# -- sources -------------------------------------------------------------------------------------------------
def _one(tmp_path, row: dict) -> dict:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (rec,), _ = load_file(path, dataset_spec("chat"))
    return rec


def test_every_source_layout_gives_the_same_record(tmp_path):
    (q1, a1), (q2, a2) = EXCHANGES[:2]
    openai = {"messages": conversation(2, True)}
    sharegpt = {
        "system": SYSTEM,
        "conversations": [
            {"from": "human", "value": q1},
            {"from": "gpt", "value": a1},
            {"from": "human", "value": q2},
            {"from": "gpt", "value": a2},
        ],
    }
    sharegpt_turn = {"conversations": [{"from": "system", "value": SYSTEM}, *sharegpt["conversations"]]}
    q2_head, q2_tail = q2.split(" ", 1)
    llama_factory = {"system": SYSTEM, "history": [[q1, a1]], "instruction": q2_head, "input": "", "output": a2}
    untidy = {"messages": [{"role": m["role"], "content": f"  {m['content']}\r\n"} for m in openai["messages"]]}
    records = [_one(tmp_path, r) for r in (openai, sharegpt, sharegpt_turn, untidy)]
    assert all(r == records[0] for r in records)
    rec = records[0]
    assert rec["messages"] == conversation(2, True) and record_messages(rec) == rec["messages"]
    assert (rec["prompt"], rec["response"]) == (q2, a2)
    assert list(rec) == ["id", "messages", "prompt", "response", "source"]
    # alpaca's input joins the instruction (here: "and" + "5 minus 1 ?" on its own paragraph)
    lf = _one(tmp_path, {**llama_factory, "instruction": q2_head, "input": q2_tail})
    assert lf["messages"][:-2] == rec["messages"][:-2] and lf["messages"][-2]["content"] == f"{q2_head}\n\n{q2_tail}"
    plain = _one(tmp_path, {**llama_factory, "instruction": q2})
    assert plain == rec


def test_two_turn_rows_keep_todays_form_and_ids(tmp_path):
    for row in gsm_rows(6, seed=2):
        today = record_id(normalize_text(row["question"]), normalize_text(row["answer"]))
        as_qa = _one(tmp_path, row)
        as_chat = _one(tmp_path, {"messages": [{"role": "user", "content": row["question"]},
                                               {"role": "assistant", "content": row["answer"]}]})  # fmt: skip
        as_lf = _one(tmp_path, {"instruction": row["question"], "output": row["answer"], "system": "", "history": []})
        for rec in (as_qa, as_chat, as_lf):
            assert list(rec) == ["id", "prompt", "response", "source"] and rec["id"] == today
        assert record_messages(as_qa) == [
            {"role": "user", "content": as_qa["prompt"]},
            {"role": "assistant", "content": as_qa["response"]},
        ]


def test_conversation_ids_hash_every_turn():
    base = conversation(2, True)
    ids = {conversation_id(base)}
    ids.add(conversation_id(base[1:]))  # without the system prompt
    ids.add(conversation_id(base[:3]))  # one exchange fewer
    ids.add(conversation_id([*base[:-1], {"role": "assistant", "content": "x"}]))  # another last answer
    ids.add(conversation_id([*base[:2], {"role": "assistant", "content": "x"}, *base[3:]]))  # another first answer
    swapped = [
        base[0],
        {"role": "user", "content": base[2]["content"]},
        {"role": "assistant", "content": base[1]["content"]},
    ]
    ids.add(conversation_id([*swapped, *base[3:]]))  # same texts, other roles
    assert len(ids) == 6 and all(len(i) == 16 for i in ids)
    assert conversation_id(base[1:3]) == record_id(base[1]["content"], base[2]["content"])


# -- bad input -----------------------------------------------------------------------------------------------
U1, A1, U2 = (
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo"},
    {"role": "user", "content": "so"},
)
SYS = {"role": "system", "content": "be terse"}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": [U1, U2, A1]}, "field 'messages' turn 2 is a user turn after a user turn"),
        ({"messages": [A1, U1, A1]}, "field 'messages' turn 1 is an assistant turn with no user turn before it"),
        ({"messages": [U1, A1, SYS, U2, A1]}, "field 'messages' turn 3 is a system turn after the first turn"),
        ({"messages": [U1, A1, A1]}, "turn 3 is an assistant turn after an assistant turn"),
        ({"messages": [SYS, U1]}, "the conversation has no assistant turn"),
        ({"messages": [U1, A1, U2]}, "field 'messages' turn 3 is a user turn at the end"),
        ({"messages": [U1, {"role": "tool", "content": "x"}]}, "field 'messages' turn 2 has role 'tool'"),
        ({"messages": [U1, {"role": ["assistant"], "content": "x"}]}, "turn 2 has role ['assistant']"),
        ({"messages": [U1, "yo"]}, "field 'messages' turn 2 must be an object with role and content, got str"),
        ({"messages": [U1, {"role": "assistant", "content": " "}]}, "field 'messages' turn 2 must be a non-empty"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}]}, "turn 2 must be a non"),
        ({"system": "s", "messages": [SYS, U1, A1]}, "both a 'system' field and a system turn in field 'messages'"),
        ({"system": ["s"], "prompt": "p", "response": "r"}, "field 'system' must be a non-empty string"),
        (
            {"history": [["a"]], "instruction": "p", "output": "r"},
            "field 'history' must be a list of [user, assistant]",
        ),
        ({"history": [["a", ""]], "instruction": "p", "output": "r"}, "field 'history' pair 1 assistant must be a non"),
    ],
)
def test_bad_conversations_are_one_line_naming_file_and_line(tmp_path, row, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "response": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_file(path, dataset_spec("chat"))
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([U1, U2, A1], "train.jsonl:2: field 'messages' turn 2 is a user turn"),
        ([U1], "train.jsonl:2: the conversation"),
    ],
)
def test_download_stage_refuses_a_bad_conversation(tmp_path, messages, message):
    rows = [{"question": "q", "answer": "a #### 1"}, {"messages": messages}]
    cwd = setup_download(tmp_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    (cwd / "mirror" / "gsm8k").rename(cwd / "mirror" / "chat")  # a dataset without fixed fields: layouts per row
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["download"]["dataset"] = "chat"
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    assert_one_error_line(run_stage(cwd, "stages.download"), message)
    assert not (cwd / "data" / "download").exists()


def test_stored_conversations_are_checked_when_read(tmp_path):
    good = {"id": "c", "messages": conversation(2, True), "prompt": EXCHANGES[1][0], "response": EXCHANGES[1][1]}
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps(good) + "\n")
    assert read_examples(path) == [good]
    bad = [
        ({**good, "messages": good["messages"][::-1]}, "field 'messages' turn 1 is an assistant turn"),
        ({**good, "prompt": EXCHANGES[0][0]}, "field 'prompt' is not the last user turn of 'messages'"),
        ({**good, "response": "other"}, "field 'response' is not the last assistant turn of 'messages'"),
        ({**good, "messages": [{"role": "user", "content": " hi "}, A1]}, "not normalized"),
        ({**good, "messages": "hi"}, "field 'messages' must be a list of {role, content} objects"),
    ]
    for row, message in bad:
        path.write_text(json.dumps(good | {"id": "other"}) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(DataError) as e:
            read_examples(path)
        assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


# -- chat templates ------------------------------------------------------------------------------------------
def test_ensure_chat_template(tmp_path):
    tok = word_tokenizer(HEADERS)
    ensure_chat_template(tok)  # its own template renders
    tok.chat_template = None
    with pytest.raises(ModelResolutionError, match="no chat template and none was given"):
        ensure_chat_template(tok)
    path = tmp_path / "inst.jinja"
    path.write_text(INST)
    ensure_chat_template(tok, path)
    assert tok.chat_template == INST
    enc = encode_record(tok, {"id": "c", "messages": conversation(2, True), "prompt": "", "response": ""})
    assert enc.response_mask == structural_mask(tok, enc.input_ids, "[/INST]", "</s>")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "chat template file not found"),
        ("", "chat template file is empty"),
        ("{% for m in messages %}{{ m['content'] }", "cannot render it (TemplateSyntaxError"),
        ("{{ raise_exception('no chats here') }}", "cannot render it (TemplateError: no chats here)"),
        (HEADERS.replace("{% for m in messages %}", "{% for m in messages[-1:] %}"), "drops the content of turn 1"),
    ],
)
def test_a_template_that_does_not_render_is_one_line(tmp_path, text, message):
    tok = word_tokenizer(HEADERS)
    path = tmp_path / "bad.jinja"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ModelResolutionError) as e:
        ensure_chat_template(tok, path)
    assert str(e.value).startswith(str(path)) or str(e.value).startswith(f"chat template {path}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_generation_header_that_swallows_the_answer_leaves_no_token_and_says_so():
    swallow = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}first {% endif %}"
    tok = word_tokenizer(swallow)
    with pytest.raises(DataError, match="record s: the chat template renders assistant turn 2 as no token"):
        encode_record(tok, {"id": "s", "prompt": "x", "response": "first"})


def test_a_template_that_refuses_system_prompts_names_the_record():
    no_system = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    tok = word_tokenizer(no_system + HEADERS)
    ensure_chat_template(tok)  # fine for data without system prompts
    with pytest.raises(DataError, match="record sys1: the chat template cannot render it .*System role not supported"):
        encode_record(tok, {"id": "sys1", "messages": conversation(1, True), "prompt": "", "response": ""})


# -- what reads records --------------------------------------------------------------------------------------
def tiny_conversations(n: int) -> list[dict]:
    """Conversations in the tiny model's vocabulary: a system prompt on every other one, 1-3 exchanges."""
    rows, out = gsm_rows(3 * n, seed=5), []
    for i in range(n):
        messages = [{"role": "system", "content": "the answer is total ."}] if i % 2 else []
        for r in rows[3 * i : 3 * i + 1 + i % 3]:
            messages += [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
        rec = {"id": conversation_id(messages), "messages": messages, "prompt": messages[-2]["content"]}
        out.append({**rec, "response": messages[-1]["content"], "source": "t"})
    return out


def tiny_mask(tok, ids: list[int]) -> list[bool]:
    return structural_mask(tok, ids, "<|assistant|>", "<|end|>")


def test_embed_covers_every_assistant_turn_and_costs_the_whole_conversation(tiny_model_dir, tmp_path):
    from infosift.embed import embed_records

    records = tiny_conversations(6)
    feats = embed_records(tiny_model_dir, records, tmp_path / "f", shard_size=4, progress=False, device="cpu")
    tok = build_tokenizer()
    for i, r in enumerate(records):
        text = tok.apply_chat_template(r["messages"], tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert feats.costs[i] == len(ids)  # every turn, system included
        assert feats.lengths[i] == sum(tiny_mask(tok, ids))  # one row per assistant token, all turns


def test_heldout_nll_scores_every_assistant_turn(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from infosift.evaluate import heldout_nll

    records = tiny_conversations(4)
    got = heldout_nll(tiny_model_dir, records, batch_size=3, device="cpu")
    tok = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for r, row in zip(records, got["per_example"], strict=True):
        ids = tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
        mask = tiny_mask(tok, ids)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        want = -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if mask[t])
        assert row["n_tokens"] == sum(mask)
        np.testing.assert_allclose(row["nll_sum"], want, rtol=1e-5)


def test_contamination_alters_the_last_assistant_turn_of_a_conversation():
    records = tiny_conversations(8)
    out, report = contaminate(records, 0.5, seed=1, modes=("truncate",))
    altered = [(a, b) for a, b in zip(records, out, strict=True) if a != b]
    assert len(altered) == report["n"] == 4
    for before, after in altered:
        assert after["messages"][:-1] == before["messages"][:-1]
        assert after["messages"][-1] == {"role": "assistant", "content": after["response"]}
        assert after["response"] != before["response"] and after["id"] == conversation_id(after["messages"])
        assert report["ids"][after["id"]] == "truncate"


def test_heldout_nll_counts_what_max_length_cut(tiny_model_dir):
    from infosift.evaluate import heldout_nll

    records = tiny_conversations(4)
    tok = build_tokenizer()
    masks = [tiny_mask(tok, encode_record(tok, r).input_ids) for r in records]
    first = [m.index(True) for m in masks]  # where each conversation's first assistant token sits
    max_length = sorted(first)[1]  # at least two conversations keep none, the others are cut or short
    got = heldout_nll(tiny_model_dir, records, max_length=max_length, device="cpu")
    lengths = [len(m) for m in masks]
    assert got["n_truncated"] == sum(n > max_length for n in lengths) > 0
    assert got["n_emptied"] == sum(f >= max_length for f in first) >= 2
    assert [p["n_tokens"] for p in got["per_example"]] == [sum(m[1:max_length]) for m in masks]
