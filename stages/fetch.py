"""fetch / fetch_mt_bench: what the pipeline reads from outside the repository enters here, under data/.

DVC can only hash a dependency it can find, and these sources are named by params, may live outside the
repository (../shared/data) or not exist until the hub fills a cache. So both stages are `always_changed` in
dvc.yaml: they run on every `dvc repro`, cost a hash of the source files, and write the same bytes when nothing
changed, so the stages after them skip; when a source file changes, its hash does, and what reads it reruns.

    python -m stages.fetch dataset    # data/source.json: download.dataset's files and their sha256
    python -m stages.fetch mt_bench evaluate   # data/mt_bench/evaluate/: MT-Bench for the judged suite
    python -m stages.fetch mt_bench sketch     # data/mt_bench/sketch/: MT-Bench as a sketch source

dataset: download.dataset as a file or folder, else <download.mirror_dir>/<dataset>/, else its hub id (cached
under download.hub_cache); with none of them, one error naming download.mirror_dir and the dataset.
mt_bench <reader>: copied from evaluate.mt_bench.dir, else the hub (cached under download.hub_cache), for one
reader, and only when that reader reads it in this configuration: evaluate when the judged suite runs
(evaluate.mt_bench.limit > 0), sketch when a sketch source is `mt_bench`. One copy per reader, so a run reaches
the fetch of only the readers it runs (dvc.yaml's matrix), and evaluate with the suite off depends on a folder
whose bytes never change. When it is not read, or cannot be had, unavailable.txt says why, and a stage that
reads it stops with that line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from infosift.data import MT_BENCH_UNAVAILABLE, MTBenchFiles, locate_mt_bench
from infosift.errors import DataError
from infosift.hashing import file_sha256
from stages._common import StageError, atomic_output, check_param, params, run
from stages.download import checked_params, dataset_source

DATASET_OUT = Path("data/source.json")
MT_BENCH_OUT = Path("data/mt_bench")  # one folder per reader under it
READERS = ("evaluate", "sketch")
MT_BENCH_DIR = "../shared/data/mt_bench"  # evaluate.mt_bench.dir when params.yaml names none


def mt_bench_params() -> tuple[str, str, list[str]]:
    """(evaluate.mt_bench.dir, download.hub_cache, what reads MT-Bench in these params: 'evaluate' and/or 'sketch')."""
    all_params = params()
    mt = check_param((all_params.get("evaluate") or {}).get("mt_bench") or {}, "evaluate.mt_bench", dict)
    folder = check_param(mt.get("dir", MT_BENCH_DIR), "evaluate.mt_bench.dir", str)
    limit = check_param(mt.get("limit", 0), "evaluate.mt_bench.limit", int, low=0)
    hub_cache = (all_params.get("download") or {}).get("hub_cache", ".cache/datasets")
    check_param(hub_cache, "download.hub_cache", str)
    sources = (all_params.get("sketch") or {}).get("sources") or {}
    sketched = isinstance(sources, dict) and "mt_bench" in sources.values()
    return folder, hub_cache, ["evaluate"] * bool(limit) + ["sketch"] * sketched


def mt_bench_source(folder: str, hub_cache: str, download: bool = True) -> MTBenchFiles:
    """MT-Bench's files from ``folder``, else the hub (locate_mt_bench); a StageError naming evaluate.mt_bench.dir."""
    try:
        return locate_mt_bench(folder, hub_cache, download)
    except DataError as e:
        raise StageError(f"params.yaml evaluate.mt_bench.dir={folder!r}: {e}") from None


def fetch_dataset() -> None:
    source = dataset_source(checked_params())
    stamp = {
        "dataset": source.name,
        "splits": {s: {"path": str(f), "sha256": file_sha256(f)} for s, f in source.splits.items()},
    }
    with atomic_output(DATASET_OUT) as tmp:
        tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"fetch: {source.name} " + ", ".join(f"{s} <- {f}" for s, f in source.splits.items()))


def fetch_mt_bench(reader: str) -> None:
    folder, hub_cache, readers = mt_bench_params()
    why_not = {
        "evaluate": "not fetched: evaluate.mt_bench.limit is 0",
        "sketch": "not fetched: no sketch source is mt_bench",
    }
    files, reason = None, why_not[reader]
    if reader in readers:
        try:
            files = mt_bench_source(folder, hub_cache)
        except StageError as e:
            reason = str(e)
    with atomic_output(MT_BENCH_OUT / reader) as tmp:
        tmp.mkdir(parents=True)
        if files is None:
            (tmp / MT_BENCH_UNAVAILABLE).write_text(reason + "\n")
        else:
            for f in files:
                shutil.copyfile(f, tmp / f.name)
            if (license_file := files.questions.parent / "LICENSE").is_file():
                shutil.copyfile(license_file, tmp / "LICENSE")
    print(f"fetch: MT-Bench for {reader} <- {files.questions.parent}" if files else f"fetch: {reader}: {reason}")


def main(argv: list[str]) -> None:
    if argv != ["dataset"] and argv not in [["mt_bench", r] for r in READERS]:
        raise StageError(f"usage: python -m stages.fetch dataset | mt_bench {'|'.join(READERS)}")
    fetch_dataset() if argv[0] == "dataset" else fetch_mt_bench(argv[1])


if __name__ == "__main__":
    run(main)
