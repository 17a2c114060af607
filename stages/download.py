"""download: a dataset -> pool / target / validation / test records plus a data manifest with hashes.

download.dataset is a file or folder (read where it is), or a name looked up in the local mirror directory
(download.mirror_dir, default ../shared/data), then the dataset's hub id (cached under download.hub_cache).
The fetch stage locates the same files first and records their hashes in data/source.json, which is what
DVC reruns this stage on (see stages/fetch.py). Without a test split (one file, or download.test_split: null),
download.test_size seeded train examples are held out as the test split, recorded in the manifest.
The split rules live in infosift/splits.py: train examples also in test are dropped, the target slice (for
GIP's query set) is held out from train, never from test, and ``download.contaminate`` (off by default) makes
a seeded share of the POOL bad after it is sampled; target and test stay clean, and the manifest records
what was altered.
"""

from __future__ import annotations

from infosift.data import DataSource, dataset_name, dataset_spec, load_file, locate_dataset, write_jsonl
from infosift.data_manifest import data_manifest, write_data_manifest
from infosift.errors import ContaminationError, DataError
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
    "validation_size",
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
    check_param(p.get("validation_size", 0), "download.validation_size", int, low=0)
    check_param(p.get("seed", 0), "download.seed", int, low=0)
    check_param(p.get("train_split", "train"), "download.train_split", str)
    test_split = check_param(p.get("test_split", "test"), "download.test_split", str, allow_none=True)
    if test_split is None and p.get("test_size") is None:
        raise StageError(
            "params.yaml download.test_size: required when download.test_split is null "
            "(how many train examples to hold out as the test split)"
        )
    if not p["dataset"].strip():
        raise StageError("params.yaml download.dataset: empty; name a dataset (a mirror folder or a known hub dataset)")
    check_name(dataset_name(p["dataset"]), "params.yaml download.dataset's name")  # records and models carry it
    fields = p.get("fields") or {}
    check_param(fields, "download.fields", dict)
    check_keys(fields, "download.fields", {"prompt", "response"})
    for key, value in fields.items():
        check_param(value, f"download.fields.{key}", str)
    return {"hub_cache": ".cache/datasets", "seed": 0, **p}


def dataset_source(p: dict, download: bool = True) -> DataSource:
    """download.dataset's files (``p``: checked_params()); one that cannot be had is a StageError naming
    download.mirror_dir and the dataset. ``download=False``: check that it can be had, download nothing."""
    try:
        return locate_dataset(
            p["dataset"],
            p.get("train_split", "train"),
            p.get("test_split", "test"),
            p.get("mirror_dir"),
            p["hub_cache"],
            download,
        )
    except DataError as e:
        where = f"download.mirror_dir={p.get('mirror_dir')!r}, download.dataset={p['dataset']!r}"
        raise StageError(f"params.yaml {where}: {e}") from None


def main(argv: list[str]) -> None:
    p = checked_params()
    contamination = contamination_option(p.get("contaminate"), p["seed"])
    fields = p.get("fields") or {}
    source = dataset_source(p)
    spec = dataset_spec(source.name, fields.get("prompt"), fields.get("response"))
    paths = dict(zip(("train", "test"), source.splits.values(), strict=False))  # train first; no test: carved
    train, train_dupes = load_file(paths["train"], spec)
    test, test_dupes = load_file(paths["test"], spec) if "test" in paths else (None, 0)
    try:
        splits = split_records(
            train,
            test,
            pool_size=p.get("pool_size"),
            target_size=int(p.get("target_size", 0)),
            test_size=p.get("test_size"),
            validation_size=int(p.get("validation_size", 0)),
            seed=p["seed"],
            contamination=contamination,
        )
    except ContaminationError as e:
        raise StageError(f"download.contaminate: {e}") from None
    except DataError as e:
        raise StageError(f"params.yaml download: {e}") from None
    pool, target, test = splits.pool, splits.target, splits.test
    parts = {"pool": pool, "target": target, "validation": splits.validation, "test": test}

    with atomic_output(OUT) as tmp:
        tmp.mkdir()
        for name, recs in parts.items():
            write_jsonl(tmp / f"{name}.jsonl", recs)
        dropped = {"train": train_dupes, "test": test_dupes}
        write_data_manifest(tmp / "manifest.json", data_manifest(spec.name, paths, splits, dropped, p, tmp))
    print(
        f"download: {spec.name} pool={len(pool)} target={len(target)} validation={len(splits.validation)} "
        f"test={len(test)} "
        f"(duplicates dropped: train {train_dupes}, test {test_dupes}) from {paths['train'].parent}"
        + (f"; test: {splits.carved} train examples held out" if splits.carved else "")
        + (f"; contaminated {splits.contamination['n']} pool records" if splits.contamination.get("n") else "")
    )


if __name__ == "__main__":
    run(main)
