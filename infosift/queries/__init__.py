"""Query kinds by name: each turns plain paths and the pool's ids into the query inputs of ``select()``.

A selector variant names its query kind (params.yaml ``select.variants.<v>.query``); the select stage
looks the kind up here and passes where the data lies. A kind returns the keyword arguments ``select()``
gets (``targets=`` for GIP's target slice, ``scores=`` for per-example signals) and the content hashes of
the files they came from, so the manifest records what produced the selection. A new kind is one
decorated function here; what a kind needs beyond reading files lives beside it in this package
(dsir_weights.py: DSIR's n-gram importance weights; attribute_scores.py: multi-attribute scores from a user file).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infosift.data import read_records
from infosift.errors import DataError, SelectionError
from infosift.features import TokenFeatures
from infosift.manifest import path_sha256


@dataclass(frozen=True)
class QuerySource:
    """Where a query kind reads from: the pool's feature ids (scores align to them) and plain paths."""

    ids: list[str]
    features: Path  # embed's output: pool/ (with self_scores.npy) and target/
    download: Path  # download's output: pool.jsonl and target.jsonl
    options: dict = field(default_factory=dict)  # the variant's query options, e.g. scores_file


QueryInputs = tuple[dict, dict]  # (keyword arguments for select(), {input name: content hash})
QueryKind = Callable[[QuerySource], QueryInputs]

_QUERIES: dict[str, QueryKind] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_query(name: str, options: tuple[str, ...] = ()) -> Callable[[QueryKind], QueryKind]:
    """Decorator: make a query kind available by ``name``; ``options`` are the variant keys it reads."""

    def wrap(fn: QueryKind) -> QueryKind:
        if name in _QUERIES:
            raise ValueError(f"query kind {name!r} registered twice")
        _QUERIES[name], _OPTIONS[name] = fn, tuple(options)
        return fn

    return wrap


def available_queries() -> list[str]:
    return sorted(_QUERIES)


def query_options() -> list[str]:
    """Variant keys that some query kind reads: they configure the query, not the selector."""
    return sorted({k for keys in _OPTIONS.values() for k in keys})


def get_query(name: str) -> QueryKind:
    """The query kind registered under ``name``; an unknown name is an error listing the known ones."""
    if name not in _QUERIES:
        known = available_queries()
        raise SelectionError(f"unknown query kind {name!r} (use {', '.join(known[:-1])} or {known[-1]})")
    return _QUERIES[name]


@register_query("targets")
def targets_query(src: QuerySource) -> QueryInputs:
    """GIP toward the target slice's token features."""
    path = src.features / "target"
    targets = TokenFeatures.load(path, mmap=True)
    if len(targets) == 0:
        raise SelectionError(f"query 'targets' needs a target slice, {path} holds none: set download.target_size > 0")
    return {"targets": targets}, {"targets": path_sha256(path)}


@register_query("scores")
def self_scores_query(src: QuerySource) -> QueryInputs:
    """GIP toward the pool's self-scores, written by embed."""
    path = src.features / "pool" / "self_scores.npy"
    if not path.is_file():
        raise SelectionError(f"query 'scores' needs {path} (the pool's self-scores, written by embed); rerun embed")
    return {"scores": np.load(path, allow_pickle=False)}, {"scores": path_sha256(path)}


@register_query("dsir")
def dsir_query(src: QuerySource) -> QueryInputs:
    """DSIR log importance weights of the pool toward the target slice's n-grams."""
    pool, target = src.download / "pool.jsonl", src.download / "target.jsonl"
    return {"scores": dsir_scores(src.ids, pool, target)}, {"pool": path_sha256(pool), "target": path_sha256(target)}


@register_query("ma", options=("attribute_weights", "scores_file"))
def attribute_scores_query(src: QuerySource) -> QueryInputs:
    """GIP toward weighted multi-attribute scores from a user file (queries/attribute_scores.py)."""
    from infosift.queries.attribute_scores import load_attribute_scores

    path = src.options.get("scores_file")
    if not path:
        raise SelectionError("query 'ma' needs scores_file (JSON {id: {attribute: value}}) in the variant config")
    scores = load_attribute_scores(path, src.ids, src.options.get("attribute_weights"))
    return {"scores": scores}, {"scores": path_sha256(path)}


def dsir_scores(ids: list[str], pool_path: Path, target_path: Path) -> np.ndarray:
    """DSIR log importance weights of the pool toward the target slice, aligned to the feature ids."""
    from infosift.queries.dsir_weights import dsir_log_weights  # pulls in data_selection: only when DSIR is asked for

    target = read_records(target_path) if target_path.stat().st_size else []
    if not target:
        raise SelectionError(f"query 'dsir' needs a target slice, {target_path} is empty: set download.target_size > 0")
    pool = {r["id"]: r for r in read_records(pool_path)}
    missing = [i for i in ids if i not in pool]
    if missing:
        raise DataError(f"{len(missing)} feature ids are not in {pool_path}; rerun embed")

    def text(r: dict) -> str:
        return f"{r['prompt']}\n{r['response']}"

    with tempfile.TemporaryDirectory(prefix="dsir-") as work:
        return dsir_log_weights([text(pool[i]) for i in ids], [text(r) for r in target], work)
