"""download: a named dataset -> pool / target / test records plus a data manifest with hashes.

Sources in order: the local mirror directory (default ../shared/data), then the dataset's hub id.
The split rules live in infosift/splits.py: train examples also in test are dropped, the target slice (for
GIP's query set) is held out from train, never from test, and ``download.contaminate`` (off by default) makes
a seeded share of the POOL bad after it is sampled; target and test stay clean, and the manifest records
what was altered.
"""

from __future__ import annotations

import json

from infosift.data import dataset_spec, load_file, locate, write_jsonl
from infosift.errors import ContaminationError
from infosift.hashing import file_sha256
from infosift.names import check_name
from infosift.splits import Contamination, split_records
from stages._common import StageError, atomic_output, check_keys, check_param, params, run

OUT = "data/download"
CONTAMINATE_KEYS = ("share", "seed", "modes")


def contamination_option(option: dict | None, seed: int) -> Contamination | None:
    """The ``download.contaminate`` option, checked; absent or share 0 is off (None)."""
    if option is None:
        return None
    if not isinstance(option, dict):
        raise StageError(f"download.contaminate must be a mapping with {', '.join(CONTAMINATE_KEYS)}, got {option!r}")
    unknown = sorted(set(option) - set(CONTAMINATE_KEYS), key=str)
    if unknown:
        raise StageError(f"download.contaminate: unknown key {unknown[0]!r} (known: {', '.join(CONTAMINATE_KEYS)})")
    share = option.get("share", 0)
    if share == 0 and not isinstance(share, bool):
        return None
    modes = option.get("modes", ("swap", "truncate"))
    if isinstance(modes, str) or not isinstance(modes, list | tuple):
        raise StageError(f"download.contaminate.modes must be a list of modes, got {modes!r}")
    # share and modes are checked where they are applied (split_records), the seed here: int(1.5) would pass
    contamination_seed = check_param(option.get("seed", seed), "download.contaminate.seed", int, low=0)
    return Contamination(share, contamination_seed, tuple(modes))


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
    "fields",
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
    check_param(p.get("train_split", "train"), "download.train_split", str)
    check_param(p.get("test_split", "test"), "download.test_split", str)
    if not p["dataset"].strip():
        raise StageError("params.yaml download.dataset: empty; name a dataset (a mirror folder or a known hub dataset)")
    check_name(p["dataset"], "params.yaml download.dataset")  # a path under mirror_dir and the hub cache
    fields = p.get("fields") or {}
    check_param(fields, "download.fields", dict)
    check_keys(fields, "download.fields", {"prompt", "response"})
    for key, value in fields.items():
        check_param(value, f"download.fields.{key}", str)
    return {"hub_cache": ".cache/datasets", "seed": 0, **p}


def main(argv: list[str]) -> None:
    p = checked_params()
    contamination = contamination_option(p.get("contaminate"), p["seed"])
    fields = p.get("fields") or {}
    spec = dataset_spec(p["dataset"], fields.get("prompt"), fields.get("response"))
    train_path = locate(spec.name, p.get("train_split", "train"), p.get("mirror_dir"), p["hub_cache"])
    test_path = locate(spec.name, p.get("test_split", "test"), p.get("mirror_dir"), p["hub_cache"])
    train, train_dupes = load_file(train_path, spec)
    test, test_dupes = load_file(test_path, spec)
    try:
        splits = split_records(
            train,
            test,
            pool_size=p.get("pool_size"),
            target_size=int(p.get("target_size", 0)),
            test_size=p.get("test_size"),
            seed=p["seed"],
            contamination=contamination,
        )
    except ContaminationError as e:
        raise StageError(f"download.contaminate: {e}") from None
    pool, target, test = splits.pool, splits.target, splits.test

    with atomic_output(OUT) as tmp:
        tmp.mkdir()
        for name, recs in (("pool", pool), ("target", target), ("test", test)):
            write_jsonl(tmp / f"{name}.jsonl", recs)
        manifest = {
            "dataset": spec.name,
            "sources": {"train": str(train_path), "test": str(test_path)},
            "source_sha256": {"train": file_sha256(train_path), "test": file_sha256(test_path)},
            "counts": splits.counts,
            "duplicates_dropped": {"train": train_dupes, "test": test_dupes},
            "train_examples_also_in_test_dropped": splits.leaked,
            "contamination": splits.contamination,
            "params": p,
            "sha256": {n: file_sha256(tmp / f"{n}.jsonl") for n in ("pool", "target", "test")},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"download: {spec.name} pool={len(pool)} target={len(target)} test={len(test)} "
        f"(duplicates dropped: train {train_dupes}, test {test_dupes}) from {train_path.parent}"
        + (f"; contaminated {splits.contamination['n']} pool records" if splits.contamination.get("n") else "")
    )


if __name__ == "__main__":
    run(main)
