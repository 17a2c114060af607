"""select@<variant>-<budget>: run one selector variant on the pool's token features, write its manifest.

A variant is a named selector configuration in params.yaml (select.variants): the selector's
registry name, its construction params, and which query signal it gets (GIP: targets or scores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from infosift.features import TokenFeatures
from infosift.manifest import build_manifest, path_sha256
from infosift.select import get_selector
from stages._common import StageError, atomic_output, params, run, variant_name

FEATURES = Path("data/features")


def variant_config(name: str, p: dict) -> tuple[str, dict, str | None]:
    """(selector name, selector params, query kind) of a variant; an unknown variant is an error."""
    variants = p.get("variants") or {}
    if name not in variants:
        raise StageError(
            f"unknown selector variant {name!r}; defined in params.yaml select.variants: {sorted(variants)}"
        )
    cfg = dict(variants[name] or {})
    selector = cfg.pop("selector", name)
    query = cfg.pop("query", None)
    return selector, cfg, query


def query_inputs(query: str | None, cfg: dict, ids: list[str]) -> tuple[dict, dict]:
    """The keyword arguments (targets= / scores=) a query kind needs, and their input hashes."""
    if query is None:
        return {}, {}
    if query == "targets":
        path = FEATURES / "target"
        return {"targets": TokenFeatures.load(path, mmap=True)}, {"targets": path_sha256(path)}
    if query == "scores":
        path = FEATURES / "pool" / "self_scores.npy"
        return {"scores": np.load(path)}, {"scores": path_sha256(path)}
    if query == "ma":
        from infosift.scores import load_attribute_scores

        path = cfg.get("scores_file")
        if not path:
            raise StageError("query 'ma' needs scores_file (JSON {id: {attribute: value}}) in the variant config")
        scores = load_attribute_scores(path, ids, cfg.get("attribute_weights"))
        return {"scores": scores}, {"scores": path_sha256(path)}
    raise StageError(f"unknown query kind {query!r} (use targets, scores or ma)")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise StageError("usage: python -m stages.select VARIANT BUDGET")
    name, budget = argv[0], int(argv[1])
    p = params("select")
    selector_name, sel_params, query = variant_config(name, p)
    query_cfg = {k: sel_params.pop(k) for k in ("scores_file", "attribute_weights") if k in sel_params}
    selector = get_selector(selector_name, **sel_params)
    features = TokenFeatures.load(FEATURES / "pool", mmap=True)
    extra, input_hashes = query_inputs(query, query_cfg, features.ids)

    t0 = time.perf_counter()
    result = selector.select(features, budget=budget, seed=int(p.get("seed", 0)), **extra)
    seconds = time.perf_counter() - t0

    manifest = build_manifest(
        variant=name,
        selector=selector_name,
        params={**sel_params, **query_cfg, "query": query},
        budget=budget,
        seed=int(p.get("seed", 0)),
        ids=features.ids,
        indices=np.asarray(result.indices),
        gains=None if result.gains is None else np.asarray(result.gains),
        inputs={"features": path_sha256(FEATURES / "pool"), **input_hashes},
        seconds=seconds,
    )
    out_dir = Path("results/select") / variant_name(name, budget)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"select: {name} chose {budget} of {len(features)} in {seconds:.2f}s -> {out_dir}/manifest.json")


if __name__ == "__main__":
    run(main)
