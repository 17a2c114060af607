"""A selection's rows written out: the select stage's subset.jsonl, read by `datasets`, and the row writer."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml

from infosift.errors import DataError
from infosift.features import TokenFeatures
from infosift.subset import read_source, write_rows
from tests.tiny import write_jsonl


def pool_records(n: int) -> list[dict]:
    """Normalized records as download writes them: pairs, and every third a conversation with a system turn."""
    out = []
    for i in range(n):
        rec = {"id": f"{i:016x}", "prompt": f"question {i}", "response": f"answer {i}", "source": "own"}
        if i % 3 == 0:
            rec = {"id": rec["id"], "messages": [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["response"]}],
                   "prompt": rec["prompt"], "response": rec["response"], "source": "own"}  # fmt: skip
        out.append(rec)
    return out


def test_select_stage_writes_the_chosen_records_beside_each_manifest(tmp_path, monkeypatch, capsys):
    """subset.jsonl holds the pool's records (conversations too), in the manifest's order, and `datasets` reads them
    back as they were."""
    import datasets

    from stages import select as stage
    from stages._common import run

    records = pool_records(12)
    rng = np.random.default_rng(0)
    feats = TokenFeatures.from_list([rng.normal(size=(2 + i % 4, 5)) for i in range(12)], [r["id"] for r in records])
    feats.with_values(feats.values.astype(np.float16)).save(tmp_path / "data/features/pool")
    write_jsonl(tmp_path / "data/download/pool.jsonl", records)
    params = {"select": {"seeds": [0, 1], "budget_unit": "examples", "variants": {"random": {"selector": "random"}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages.select", "random", "12"])
    run(stage.main)
    by_id = {r["id"]: r for r in records}
    for seed in (0, 1):
        seed_dir = tmp_path / f"results/select/random-12/seed-{seed}"
        ids = json.loads((seed_dir / "manifest.json").read_text())["ids"]
        ds = datasets.load_dataset("json", data_files=str(seed_dir / "subset.jsonl"), split="train",
                                   cache_dir=str(tmp_path / "hf"))  # fmt: skip
        rows = [{k: v for k, v in row.items() if v is not None} for row in ds]  # a pair has no messages: null
        assert rows == [by_id[i] for i in ids] and len(rows) == 12
        assert ids != [r["id"] for r in records]  # the selection's order, not the pool's


def test_parquet_rows_keep_every_field_of_every_row(tmp_path):
    """Parquet columns are the union of the rows' fields, not the first row's; reading back gives the values."""
    import pyarrow.parquet as pq

    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d", "extra": [1, 2]}]
    write_rows(tmp_path / "r.parquet", rows)
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == [dict(rows[0], extra=None), rows[1]]
    src = read_source(tmp_path / "r.parquet")
    assert [src.rows[r["id"]] for r in src.records] == [dict(rows[0], extra=None), rows[1]]


def test_a_row_json_cannot_hold_is_one_error_and_no_file(tmp_path):
    with pytest.raises(DataError, match="row 2 holds a value JSON cannot hold"):
        write_rows(tmp_path / "r.jsonl", [{"a": 1}, {"a": b"bytes"}])
    assert list(tmp_path.iterdir()) == []
