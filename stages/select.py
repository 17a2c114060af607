"""select@<variant>-<budget>: run one selector variant on the pool's token features, once per seed.

A variant is a named selector configuration in params.yaml (select.variants): the selector's
registry name, its construction params, and which query signal it gets (a kind in infosift/queries/:
GIP's targets or scores, DSIR's n-gram importance weights toward the target slice). Budgets count
``select.budget_unit``: tokens (what a fine-tune pays for) or examples. A seeded selector (random,
density) selects once per seed in ``select.seeds``; a deterministic one selects once and writes that
selection for every seed, so each seed still gets its own fine-tune.
A variant's ``filter: {score: pmi | eos, drop: share}`` drops that share of the pool with the lowest quality
score (data/features/quality.npz, written by embed) before its selector runs (select/filtered.py).
Distributed selection: ``select.partitions`` k > 1 runs every distributable variant (fishersft, sentence_od;
a variant may set its own ``partitions``) as GreeDi, the two-round distributed greedy of select/greedi.py, its
partition drawn with the seed; ``select.engine: ray`` runs round 1 as Ray tasks on ``select.ray.address``
(null: a local Ray on this machine). The manifest's info records k, the partition seed, the engine and
which of (union, best part) won.
Output: results/select/<variant>-<budget>/seed-<s>/manifest.json, and subset.jsonl beside it: the chosen records in
the order chosen, exactly as the fine-tune reads them from data/download/pool.jsonl (normalized: {id, prompt,
response, source}, plus ``messages`` for a conversation that is not one user/assistant pair), ready for any trainer.
The raw rows of the source file are not kept by download; ``infosift export MANIFEST --data SOURCE`` writes them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from infosift.data import read_records
from infosift.errors import SelectionError
from infosift.features import TokenFeatures
from infosift.manifest import build_manifest, path_sha256
from infosift.names import check_name
from infosift.quality import SCORES, load_quality
from infosift.queries import QuerySource, get_query, query_options
from infosift.select import distributable, get_selector
from infosift.select.base import UNITS
from infosift.select.filtered import Filtered, check_drop
from infosift.select.greedi import ENGINES
from infosift.subset import chosen_rows, write_rows
from stages._common import (
    StageError,
    atomic_output,
    check_items,
    check_keys,
    check_param,
    params,
    run,
    variant_name,
    whole_number,
)

KNOWN = {"run", "budget_unit", "budgets", "seeds", "partitions", "engine", "ray", "variants"}
FEATURES = Path("data/features")
DOWNLOAD = Path("data/download")
QUALITY = FEATURES / "quality.npz"


def variant_config(name: str, p: dict) -> tuple[str, dict, str | None]:
    """(selector name, selector params, query kind) of a variant; an unknown variant is an error."""
    variants = check_param(p.get("variants") or {}, "select.variants", dict)
    if name not in variants:
        raise StageError(
            f"unknown selector variant {name!r}; defined in params.yaml select.variants: {sorted(variants)}"
        )
    cfg = dict(check_param(variants[name] or {}, f"select.variants.{name}", dict))
    selector = cfg.pop("selector", name)
    query = cfg.pop("query", None)
    return selector, cfg, query


def scalar_info(info: dict) -> dict:
    """The JSON-able scalars of a selector's info; arrays (per-example densities) and wall times (``*_s``)
    stay out, so equal selections have equal manifest hashes."""
    keep = {k: v for k, v in info.items() if isinstance(v, str | int | float | bool | np.generic) or v is None}
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in keep.items() if not k.endswith("_s")}


def filter_config(name: str, cfg: object) -> dict | None:
    """A variant's ``filter: {score, drop}`` (see select/filtered.py), checked before any features are read."""
    if cfg is None:
        return None
    where = f"select.variants.{name}.filter"
    check_keys(check_param(cfg, where, dict), where, {"score", "drop"})
    score = check_param(cfg.get("score"), f"{where}.score", str, choices=SCORES)
    try:
        return {"score": score, "drop": check_drop(cfg.get("drop"))}
    except SelectionError as e:
        raise StageError(f"params.yaml {where}.drop: {e}") from None


def distribution(p: dict, selector: str, sel_params: dict) -> dict:
    """get_selector's partitions / engine / ray_address for this variant; {} when it runs as one greedy here."""
    partitions = check_param(p.get("partitions", 1), "select.partitions", int, low=1)
    engine = check_param(p.get("engine", "local"), "select.engine", str, choices=ENGINES)
    ray = p.get("ray") or {}
    check_keys(ray, "select.ray", {"address"})
    address = check_param(ray.get("address"), "select.ray.address", str, allow_none=True)
    if not distributable(selector):
        return {}
    out = {"partitions": sel_params.get("partitions", partitions), "engine": sel_params.get("engine", engine)}
    if out["engine"] == "ray":
        out["ray_address"] = address
    return out if out["partitions"] != 1 or out["engine"] != "local" else {}


def checked_variant(name: str, p: dict) -> tuple[str, list[int], tuple]:
    """(budget unit, seeds, (selector name, its params, query, query options, query kind, selector, filter)) of
    variant ``name`` in the select section ``p``, each checked and the selector built, before any features are
    read."""
    unit = check_param(p.get("budget_unit", "examples"), "select.budget_unit", str, choices=UNITS)
    check_keys(p, "select", KNOWN)
    seeds = check_items(p.get("seeds", [0]), "select.seeds", int, low=0)
    selector_name, sel_params, query = variant_config(name, p)
    filt = filter_config(name, sel_params.pop("filter", None))
    query_cfg = {k: sel_params.pop(k) for k in query_options() if k in sel_params}
    query_kind = None if query is None else get_query(query)
    scale = distribution(p, selector_name, sel_params)
    selector = get_selector(selector_name, **{**sel_params, **scale})
    return unit, seeds, (selector_name, sel_params, query, query_cfg, query_kind, selector, filt)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise StageError("usage: python -m stages.select VARIANT BUDGET")
    name, budget = check_name(argv[0], "select VARIANT"), whole_number(argv[1], "budget")
    p = params("select")
    unit, seeds, (selector_name, sel_params, query, query_cfg, query_kind, selector, filt) = checked_variant(name, p)
    features = TokenFeatures.load(FEATURES / "pool", mmap=True)
    try:  # corrupted features are an error for every selector, also those that never read the values
        features.check_finite()
    except ValueError as e:
        raise StageError(f"{FEATURES / 'pool'}: {e}; rerun embed") from None
    source = QuerySource(ids=features.ids, features=FEATURES, download=DOWNLOAD, options=query_cfg)
    extra, input_hashes = ({}, {}) if query_kind is None else query_kind(source)
    if filt is not None:  # drop the worst share of the pool by a quality score embed wrote, select from the rest
        selector = Filtered(selector, load_quality(QUALITY, features.ids)[filt["score"]], filt["drop"], filt["score"])
        input_hashes["quality"] = path_sha256(QUALITY)
    deterministic = bool(getattr(selector, "deterministic", False))
    pool = {r["id"]: r for r in read_records(DOWNLOAD / "pool.jsonl")}  # for subset.jsonl

    out_dir = Path("results/select") / variant_name(name, budget)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        result, seconds = None, 0.0
        for seed in seeds:
            if result is None or not deterministic:
                t0 = time.perf_counter()
                result = selector.select(features, budget=budget, seed=seed, unit=unit, **extra)
                seconds = time.perf_counter() - t0
            manifest = build_manifest(
                variant=name,
                selector=selector_name,
                params={**sel_params, **query_cfg, "query": query, **({"filter": filt} if filt else {})},
                budget=budget,
                seed=seed,
                ids=features.ids,
                indices=np.asarray(result.indices),
                gains=None if result.gains is None else np.asarray(result.gains),
                inputs={"features": path_sha256(FEATURES / "pool"), **input_hashes},
                seconds=seconds,
                timings={k: v for k, v in result.info.items() if k.endswith("_s") and isinstance(v, int | float)},
                info={
                    **scalar_info(result.info),
                    "unit": unit,
                    "deterministic": deterministic,
                    "train_tokens": int(features.token_costs[np.asarray(result.indices, dtype=np.int64)].sum()),
                },
            )
            (tmp / f"seed-{seed}").mkdir()
            (tmp / f"seed-{seed}" / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            rows = chosen_rows(manifest["ids"], pool, f"results/select/{name}", DOWNLOAD / "pool.jsonl")
            write_rows(tmp / f"seed-{seed}" / "subset.jsonl", rows)
            print(
                f"select: {name} seed {seed} chose {len(result.indices)} of {len(features)} examples "
                f"({manifest['info']['train_tokens']} tokens; budget {budget} {unit}) in {seconds:.2f}s"
            )


if __name__ == "__main__":
    run(main)
