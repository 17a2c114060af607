"""The data manifest's one schema: what download writes through infosift/data_manifest.py, compare and the MLflow
lineage read back through it (the contaminated ids, the splits' digests); a foreign manifest is one DataError."""

from __future__ import annotations

import json

import pytest

from infosift.data import write_jsonl
from infosift.data_manifest import contaminated_ids, data_manifest, split_digests, write_data_manifest
from infosift.errors import DataError
from infosift.hashing import file_sha256
from infosift.splits import Contamination, split_records
from tests.test_contaminate import make_records


def written(tmp_path, contamination: Contamination | None, test: list[dict] | None = None):
    """Splits of generated records written as download writes them; (manifest path, splits)."""
    train = make_records(40)
    splits = split_records(
        train, test, pool_size=20, test_size=None if test else 8, seed=1, contamination=contamination
    )
    for name in splits.counts:
        write_jsonl(tmp_path / f"{name}.jsonl", getattr(splits, name))
    source = tmp_path / "source.jsonl"
    write_jsonl(source, train)
    manifest = data_manifest("toy", {"train": source}, splits, {"train": 0, "test": 0}, {"seed": 1}, tmp_path)
    write_data_manifest(tmp_path / "manifest.json", manifest)
    return tmp_path / "manifest.json", splits


def test_the_reader_finds_what_the_writer_recorded(tmp_path):
    path, splits = written(tmp_path, Contamination(0.25, seed=2))
    assert contaminated_ids(path) == set(splits.contamination["ids"])
    assert len(splits.contamination["ids"]) == round(0.25 * len(splits.pool))
    assert set(contaminated_ids(path)) <= {r["id"] for r in splits.pool}
    assert split_digests(path) == {
        n: file_sha256(tmp_path / f"{n}.jsonl") for n in ("pool", "target", "validation", "test")
    }
    manifest = json.loads(path.read_text())
    assert manifest["test_held_out_from_train"] == {"n": 8, "seed": 3}  # no test split: carved with seed + 2


def test_a_clean_pool_or_no_manifest_has_no_contaminated_ids(tmp_path):
    path, _ = written(tmp_path, None, test=make_records(50)[40:])
    assert contaminated_ids(path) is None
    assert "test_held_out_from_train" not in json.loads(path.read_text())  # a test split was given
    assert contaminated_ids(tmp_path / "absent.json") is None and split_digests(tmp_path / "absent.json") == {}


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"sha256": {"pool": 3}}, "field 'sha256' must map file names to hex digests"),
        ({"contamination": [1]}, "field 'contamination' must be an object"),
        ({"contamination": {"ids": [1, 2]}}, "field 'contamination.ids' must map record ids"),
    ],
)
def test_a_foreign_manifest_is_one_data_error_naming_it(tmp_path, manifest, message):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message) as e:
        contaminated_ids(path)
    assert str(e.value).startswith(str(path))
