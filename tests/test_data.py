"""download's library half: parsing, validation errors with file:line, stable ids, dedup, subsampling."""

from __future__ import annotations

import json

import pytest

from infosift.data import (
    DataError,
    DatasetSpec,
    dataset_spec,
    load_file,
    normalize_text,
    read_rows,
    record_id,
    subsample,
)

SPEC = DatasetSpec("t", "question", "answer")


def write(tmp_path, name, text: bytes | str):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_jsonl_records_have_stable_content_ids(tmp_path):
    rows = [{"question": "q1 ", "answer": "a1\r\n"}, {"question": "q2", "answer": "a2"}]
    p = write(tmp_path, "x.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    recs, dupes = load_file(p, SPEC)
    assert dupes == 0
    assert [r["prompt"] for r in recs] == ["q1", "q2"]
    assert recs[0]["id"] == record_id("q1", "a1") and len(recs[0]["id"]) == 16
    assert recs[0]["source"] == "t"
    # same content in another file, order and format -> same ids
    p2 = write(tmp_path, "y.json", json.dumps(list(reversed(rows))))
    recs2, _ = load_file(p2, SPEC)
    assert {r["id"] for r in recs2} == {r["id"] for r in recs}


def test_duplicates_dropped_deterministically_and_counted(tmp_path):
    rows = [{"question": "q", "answer": "a"}, {"question": "q ", "answer": "a"}, {"question": "z", "answer": "a"}]
    p = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    recs, dupes = load_file(p, SPEC)
    assert dupes == 1 and [r["prompt"] for r in recs] == ["q", "z"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "answer": ["1", "2"]}), p)
    recs, _ = load_file(p, SPEC)
    assert [r["response"] for r in recs] == ["1", "2"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"question": "q", "answer": "a"}\n{"question": "q2", "answer"\n', r"m\.jsonl:2: malformed JSON"),
        (b'{"question": "q", "answer": "a"}\n{"question": "q2"}\n', r"m\.jsonl:2: missing field 'answer'"),
        (b'{"question": "q", "answer": "a"}\n{"question": "\xff\xfe", "answer": "a"}\n', r"m\.jsonl:2: not UTF-8"),
        (b"", r"m\.jsonl: file is empty"),
        (b"\n\n", r"m\.jsonl: no records"),
        (b'["not", "an object"]\n', r"m\.jsonl:1: this is a JSON array, but JSONL expects one JSON object per line"),
        (b'{"question": "q", "answer": "a"}\n"just a string"\n', r"m\.jsonl:2: expected a JSON object, got str"),
        (b'{"question": "", "answer": "a"}\n', r"m\.jsonl:1: field 'question' must be a non-empty string"),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, content, expected):
    p = write(tmp_path, "m.jsonl", content)
    with pytest.raises(DataError, match=expected):
        load_file(p, SPEC)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(read_rows(tmp_path / "nope.jsonl"))


def test_normalize_text():
    assert normalize_text("a  \r\nb\t\n\n") == "a\nb"


def test_subsample_is_seeded_and_order_preserving():
    recs = [{"id": str(i)} for i in range(100)]
    a, b = subsample(recs, 10, seed=3), subsample(recs, 10, seed=3)
    assert a == b and len(a) == 10
    assert [int(r["id"]) for r in a] == sorted(int(r["id"]) for r in a)
    assert subsample(recs, 10, seed=4) != a
    assert subsample(recs, None, seed=0) == recs


def test_mt_bench_files_name_the_missing_file(tmp_path):
    from infosift.data import mt_bench_files

    root = tmp_path / "mt_bench"
    root.mkdir()
    for name in ("question.jsonl", "reference_answer_gpt-4.jsonl"):
        (root / name).write_text("{}\n")
    with pytest.raises(DataError, match="judge_prompts.jsonl: not found"):
        mt_bench_files(tmp_path)
    (root / "judge_prompts.jsonl").write_text("{}\n")
    assert mt_bench_files(tmp_path).judge_prompts == root / "judge_prompts.jsonl"


# -- a new dataset needs no code: common SFT layouts are recognised per row --------------------------
@pytest.mark.parametrize(
    "row, prompt, response",
    [
        ({"prompt": "p", "response": "r"}, "p", "r"),
        ({"question": "q", "answer": "a", "id": 3}, "q", "a"),
        ({"instruction": "do", "input": "this", "output": "done"}, "do\n\nthis", "done"),
        ({"instruction": "do", "input": "", "output": "done"}, "do", "done"),
        ({"problem": "1+1", "solution": "2"}, "1+1", "2"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "yo"}]}, "hi", "yo"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "hi", "yo"),
    ],
)
def test_generic_dataset_layouts(tmp_path, row, prompt, response):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (rec,), _ = load_file(path, dataset_spec("unseen"))
    assert (rec["prompt"], rec["response"]) == (prompt, response)
    assert rec["source"] == "unseen"


def test_explicit_fields_override_the_layout(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a", "rationale": "because"}) + "\n")
    (rec,), _ = load_file(path, dataset_spec("unseen", response_field="rationale"))
    assert (rec["prompt"], rec["response"]) == ("q", "because")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"text": "just text"}, r"missing field 'prompt' \(has: text\) \(set download.fields"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "the conversation has no assistant turn"),
        ({"messages": "hi"}, "must be a list of turns"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
         r"field 'messages' turn 2 must be a non-empty string"),
    ],
)
def test_unrecognised_layouts_are_one_clear_error(tmp_path, row, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        load_file(path, dataset_spec("unseen"))


def test_a_jsonl_line_past_the_per_row_limit_is_one_error_naming_it(tmp_path, monkeypatch):
    import infosift.data as data

    monkeypatch.setattr(data, "MAX_LINE_BYTES", 64)
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n' + '{"question": "' + "x" * 100 + '", "answer": "a"}\n')
    rows = data.read_rows(path)
    assert next(rows)[0] == 1  # the first line is read before the second is
    with pytest.raises(DataError, match=r"train.jsonl:2: line longer than 0 MiB \(the per-row limit\)"):
        next(rows)


def test_parquet_is_read_a_batch_at_a_time(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import infosift.data as data

    monkeypatch.setattr(data, "PARQUET_BATCH", 2)
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    assert [r for _, r in data.read_rows(tmp_path / "t.parquet")] == rows
