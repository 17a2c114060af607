"""download: a named dataset -> pool / target / test records plus a data manifest with hashes.

Sources in order: the local mirror directory (default ../shared/data), then the dataset's hub id.
The target slice (for GIP's query set) is held out from the train split, never from test.
``download.contaminate`` (off by default) makes a seeded share of the POOL bad after it is sampled
(infosift/contaminate.py); target and test stay clean, and the manifest records what was altered.
"""

from __future__ import annotations

import json

from infosift.contaminate import contaminate
from infosift.data import dataset_spec, load_file, locate, subsample, write_jsonl
from infosift.manifest import file_sha256
from stages._common import StageError, atomic_output, check_keys, check_param, params, run

OUT = "data/download"
CONTAMINATE_KEYS = ("share", "seed", "modes")


def contaminate_pool(pool: list[dict], option: dict | None, seed: int, clean_ids: set[str]) -> tuple[list, dict]:
    """Apply the ``download.contaminate`` option to the pool; absent or share 0 is off ({"share": 0})."""
    if option is None:
        return pool, {"share": 0}
    if not isinstance(option, dict):
        raise StageError(f"download.contaminate must be a mapping with {', '.join(CONTAMINATE_KEYS)}, got {option!r}")
    unknown = sorted(set(option) - set(CONTAMINATE_KEYS))
    if unknown:
        raise StageError(f"download.contaminate: unknown key {unknown[0]!r} (known: {', '.join(CONTAMINATE_KEYS)})")
    share = option.get("share", 0)
    if share == 0 and not isinstance(share, bool):
        return pool, {"share": 0}
    modes = option.get("modes", ("swap", "truncate"))
    if isinstance(modes, str) or not isinstance(modes, list | tuple):
        raise StageError(f"download.contaminate.modes must be a list of modes, got {modes!r}")
    try:
        pool, report = contaminate(pool, share, seed=int(option.get("seed", seed)), modes=tuple(modes))
    except (ValueError, TypeError) as e:  # a bad share, seed or mode
        raise StageError(f"download.contaminate: {e}") from None
    clash = sorted(set(report["ids"]) & clean_ids)
    if clash:
        raise StageError(f"download.contaminate: altered record {clash[0]} equals a target or test record")
    return pool, report


KNOWN = {
    "dataset",
    "mirror_dir",
    "hub_cache",
    "pool_size",
    "target_size",
    "test_size",
    "seed",
    "contaminate",
    "train_split",
    "test_split",
}


def checked_params() -> dict:
    """download's params, each checked for type and range before anything is read."""
    p = params("download")
    check_keys(p, "download", KNOWN)
    check_param(p.get("dataset"), "download.dataset", str)
    check_param(p.get("hub_cache", ".cache/datasets"), "download.hub_cache", str)
    check_param(p.get("mirror_dir"), "download.mirror_dir", str, allow_none=True)
    check_param(p.get("pool_size"), "download.pool_size", int, low=1, allow_none=True)
    check_param(p.get("target_size", 0), "download.target_size", int, low=0)
    check_param(p.get("test_size"), "download.test_size", int, low=1, allow_none=True)
    check_param(p.get("seed", 0), "download.seed", int, low=0)
    return {"hub_cache": ".cache/datasets", "seed": 0, **p}


def main(argv: list[str]) -> None:
    p = checked_params()
    spec = dataset_spec(p["dataset"])
    train_path = locate(spec.name, p.get("train_split", "train"), p.get("mirror_dir"), p["hub_cache"])
    test_path = locate(spec.name, p.get("test_split", "test"), p.get("mirror_dir"), p["hub_cache"])
    train, train_dupes = load_file(train_path, spec)
    test, test_dupes = load_file(test_path, spec)

    # Never let a test example into training, even if the source splits overlap.
    test_ids = {r["id"] for r in test}
    leaked = sum(r["id"] in test_ids for r in train)
    train = [r for r in train if r["id"] not in test_ids]

    target_size = int(p.get("target_size", 0))
    if target_size >= len(train):
        raise StageError(f"target_size {target_size} leaves no training pool ({len(train)} train records)")
    target = subsample(train, target_size, seed=p["seed"] + 1) if target_size else []
    target_ids = {r["id"] for r in target}
    rest = [r for r in train if r["id"] not in target_ids]
    pool_size = p.get("pool_size")
    if pool_size is not None and int(pool_size) > len(rest):
        raise StageError(f"pool_size {pool_size} is larger than the {len(rest)} train records available")
    pool = subsample(rest, pool_size, seed=p["seed"])
    test = subsample(test, p.get("test_size"), seed=p["seed"])
    clean_ids = target_ids | {r["id"] for r in test}
    pool, contamination = contaminate_pool(pool, p.get("contaminate"), p["seed"], clean_ids)

    with atomic_output(OUT) as tmp:
        tmp.mkdir()
        for name, recs in (("pool", pool), ("target", target), ("test", test)):
            write_jsonl(tmp / f"{name}.jsonl", recs)
        manifest = {
            "dataset": spec.name,
            "sources": {"train": str(train_path), "test": str(test_path)},
            "source_sha256": {"train": file_sha256(train_path), "test": file_sha256(test_path)},
            "counts": {"pool": len(pool), "target": len(target), "test": len(test)},
            "duplicates_dropped": {"train": train_dupes, "test": test_dupes},
            "train_examples_also_in_test_dropped": leaked,
            "contamination": contamination,
            "params": p,
            "sha256": {n: file_sha256(tmp / f"{n}.jsonl") for n in ("pool", "target", "test")},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"download: {spec.name} pool={len(pool)} target={len(target)} test={len(test)} "
        f"(duplicates dropped: train {train_dupes}, test {test_dupes}) from {train_path.parent}"
        + (f"; contaminated {contamination['n']} pool records" if contamination.get("n") else "")
    )


if __name__ == "__main__":
    run(main)
