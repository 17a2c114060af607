"""Selection manifests and content hashes: every artifact that feeds a later step says what made it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from infosift.data import parse_json
from infosift.errors import DataError
from infosift.hashing import file_sha256


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(obj: object) -> str:
    """sha256 of the canonical JSON form: equal content, equal hash, whatever the key order."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def path_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory's (relative name, file hash) list."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    entries = [(str(p.relative_to(path)), file_sha256(p)) for p in sorted(path.rglob("*")) if p.is_file()]
    return content_hash(entries)


def build_manifest(
    *,
    variant: str,
    selector: str,
    params: dict,
    budget: int,
    seed: int,
    ids: list[str],
    indices: np.ndarray,
    gains: np.ndarray | None,
    inputs: dict[str, str],
    seconds: float | None = None,
    info: dict | None = None,
    timings: dict[str, float] | None = None,
) -> dict:
    """The selection manifest; its `hash` covers everything but itself and the wall times
    (``seconds``, and ``timings``: the selector's own, e.g. its first pass), which differ run to run.

    ``info``: what the selector reports about its run (unit, budget used, CELF's choice, objective...).
    """
    body = {
        "variant": variant,
        "selector": selector,
        "params": params,
        "budget": int(budget),
        "seed": int(seed),
        "ids": [ids[int(i)] for i in indices],
        "indices": [int(i) for i in indices],
        "gains": None if gains is None else [float(g) for g in gains],
        "inputs": inputs,
        "info": info or {},
    }
    manifest = {**body, "hash": content_hash(body)}
    if seconds is not None:
        manifest["seconds"] = round(float(seconds), 3)
    if timings:
        manifest["timings"] = {k: round(float(v), 3) for k, v in timings.items()}
    return manifest


UNHASHED = ("hash", "seconds", "timings")


def verify_manifest(manifest: dict, where: str = "manifest") -> None:
    """Raise DataError (a ValueError) if the manifest is not one or was edited after it was written."""
    if not isinstance(manifest, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    body = {k: v for k, v in manifest.items() if k not in UNHASHED}
    if content_hash(body) != manifest.get("hash"):
        raise DataError(f"{where}: hash does not match its content (edited by hand?); rerun select")


def read_json_object(path: str | Path, missing: str = "not found") -> dict:
    """A JSON object from disk; a missing, non-UTF-8, malformed or non-object file is one DataError naming it.

    The one reader of the small JSON files stages hand each other (manifests, metrics.json), so a truncated or
    foreign file says which it is. ``missing``: what to say when the file is not there (e.g. which stage writes it).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {missing}")
    obj = parse_json(path.read_bytes(), path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_manifest(path: str | Path) -> dict:
    """A selection manifest from disk, checked: JSON object, untouched since select wrote it, ids a list of strings.

    The one reader for every stage downstream of select, so a truncated, foreign or hand-edited manifest is
    one DataError naming the file.
    """
    path = Path(path)
    manifest = read_json_object(path, missing="not found; run the select stage that writes it")
    verify_manifest(manifest, str(path))
    ids = manifest.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{path}: field 'ids' must be a list of record ids")
    return manifest
