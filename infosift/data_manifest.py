"""The data manifest download writes beside its splits (data/download/manifest.json): where each split came from,
their counts and sha256s, and which pool records were made bad on purpose.

One home for its schema: download builds it here, compare and the MLflow lineage read it here, so a field renamed
on one side cannot silently read as absent on the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from infosift.errors import DataError
from infosift.hashing import file_sha256
from infosift.manifest import read_json_object
from infosift.splits import Splits

DATA_MANIFEST = Path("data/download/manifest.json")  # where the pipeline keeps it, relative to the workspace


def data_manifest(
    dataset: str,
    sources: dict[str, Path],
    splits: Splits,
    duplicates_dropped: dict[str, int],
    params: dict,
    out_dir: Path,
) -> dict:
    """The manifest of splits written as ``out_dir/<split>.jsonl``: ``sources`` are the files read (train first),
    ``params`` the download params that made them (recorded as given)."""
    manifest = {
        "dataset": dataset,
        "sources": {k: str(f) for k, f in sources.items()},
        "source_sha256": {k: file_sha256(f) for k, f in sources.items()},
        "counts": splits.counts,
        "duplicates_dropped": duplicates_dropped,
        "train_examples_also_in_test_dropped": splits.leaked,
        "contamination": splits.contamination,
        "params": params,
        "sha256": {n: file_sha256(out_dir / f"{n}.jsonl") for n in splits.counts},
    }
    if splits.carved:  # only then: a dataset with a test split keeps the manifest it always had
        manifest["test_held_out_from_train"] = {"n": splits.carved, "seed": params["seed"] + 2}  # carve_test's draw
    return manifest


def write_data_manifest(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def read_data_manifest(path: str | Path = DATA_MANIFEST) -> dict:
    """The manifest, its ``sha256`` map checked (MLflow's dataset digests come from it): a foreign file is one
    DataError naming it."""
    manifest = read_json_object(path)
    digests = manifest.get("sha256", {})
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise DataError(f"{path}: field 'sha256' must map file names to hex digests, got {digests!r}")
    return manifest


def split_digests(path: str | Path = DATA_MANIFEST) -> dict[str, str]:
    """split name -> sha256 of its JSONL as download wrote it; empty when there is no manifest."""
    return read_data_manifest(path).get("sha256", {}) if Path(path).exists() else {}


def contaminated_ids(path: str | Path = DATA_MANIFEST) -> set[str] | None:
    """Ids download made bad on purpose (None when the pool is clean, or there is no manifest)."""
    if not Path(path).exists():
        return None
    report = read_data_manifest(path).get("contamination")
    if not report:
        return None
    if not isinstance(report, dict):
        raise DataError(f"{path}: field 'contamination' must be an object, got {report!r}")
    ids = report.get("ids")
    if not ids:
        return None
    if not isinstance(ids, dict | list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{path}: field 'contamination.ids' must map record ids to how each was altered")
    return set(ids)
