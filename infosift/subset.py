"""A selection's rows in the user's own format: read a data source keeping each raw row beside its record,
and write the rows a manifest names back out (JSONL or Parquet) exactly as they were.

A manifest names records by id (infosift.data: a hash of the normalized conversation), so the same
selection can be written from any copy of the data: the file it was made from, a Parquet export of it, or
the pipeline's pool. The rows written are the source's own (same fields, same values) in selection order,
ready for any trainer (TRL, LLaMA-Factory, axolotl) that reads the source format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from infosift.atomic import atomic_output
from infosift.data import DATASETS, SUFFIXES, dataset_spec, locate, normalize_row, read_rows
from infosift.errors import DataError

FORMATS = ("jsonl", "parquet")


@dataclass
class Source:
    """Normalized records of a data source and, per record id, the raw row it came from."""

    path: Path  # the file or save_to_disk folder the rows were read from
    records: list[dict]  # infosift.data records in source order, repeats dropped (first kept)
    rows: dict[str, dict]  # record id -> its raw row (the first, when a conversation repeats)
    n_rows: int  # rows read, repeats included


def read_source(
    data: str | Path,
    prompt_field: str | None = None,
    response_field: str | None = None,
    split: str = "train",
    mirror_dir: str | Path | None = None,
    hub_cache: str | Path = ".cache/datasets",
) -> Source:
    """Records and raw rows of ``data``: a .jsonl/.json/.parquet file, a ``datasets.save_to_disk`` folder
    (``split`` of a DatasetDict), or a registered dataset name (DATASETS; its ``split`` through data.locate).

    Rows are normalized exactly as the download stage does it (infosift.data.normalize_row), so a record has
    the id it has in the pipeline; explicit field names override the layouts recognised per row.
    """
    path = Path(data).expanduser()
    if path.is_dir():
        name, rows = path.name, _disk_rows(path, split)
    elif path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"{path}: not a {'/'.join(SUFFIXES)} file or a datasets.save_to_disk folder")
        name, rows = path.stem, read_rows(path)
    elif str(data) in DATASETS:
        name = str(data)
        path = locate(name, split, mirror_dir, hub_cache)
        rows = read_rows(path)
    else:
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"{data}: no such file or folder, and not a registered dataset (known: {known})")
    spec = dataset_spec(name, prompt_field, response_field)
    records, by_id, n = [], {}, 0
    for lineno, row in rows:
        n += 1
        rec = normalize_row(row, spec, path, lineno)
        if rec["id"] not in by_id:
            by_id[rec["id"]] = row
            records.append(rec)
    if not records:
        raise DataError(f"{path}: no records")
    return Source(path, records, by_id, n)


def _disk_rows(path: Path, split: str) -> Iterable[tuple[int, dict]]:
    """(row number, row) of a datasets save_to_disk folder: a Dataset, or ``split`` of a DatasetDict."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path}: not a folder written by datasets' save_to_disk ({first})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (has: {', '.join(ds)})")
        ds = ds[split]
    return enumerate(ds.to_list(), start=1)


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """The format to write ``path`` in: ``fmt`` when given, else its suffix; anything else is a DataError."""
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"format {fmt!r} is not one the exporter writes; use one of {', '.join(FORMATS)}")
    fmt = fmt or Path(path).suffix.lstrip(".")
    if fmt not in FORMATS:
        raise DataError(f"{path}: write the rows to a .jsonl or .parquet path (the suffix picks the format)")
    return fmt


def chosen_rows(ids: list[str], rows: dict[str, dict], where: str, data: str | Path) -> list[dict]:
    """The rows of ``ids`` (``rows``: id -> row of ``data``) in their order; an id ``data`` lacks is a DataError
    (a manifest of other data)."""
    missing = [i for i in ids if i not in rows]
    if missing:
        raise DataError(
            f"{where}: {len(missing)} of its {len(ids)} ids are not in {data} (first: {missing[0]}); "
            "name the data the selection was made from"
        )
    return [rows[i] for i in ids]


def write_rows(path: str | Path, rows: list[dict], fmt: str | None = None) -> Path:
    """Write ``rows`` to ``path`` as JSONL (one object a line, keys in their order) or Parquet, atomically.

    Parquet columns are the union of the rows' fields in order of first appearance (a field a row lacks is null).
    """
    path = Path(path)
    fmt = output_format(path, fmt)
    if fmt == "jsonl":
        lines = []
        for n, row in enumerate(rows, start=1):
            try:
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            except (TypeError, ValueError) as e:
                raise DataError(f"{path}: row {n} holds a value JSON cannot hold ({e}); write .parquet") from None
        with atomic_output(path) as tmp:
            tmp.write_text("".join(lines), encoding="utf-8")
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = list(dict.fromkeys(k for row in rows for k in row))
    try:
        table = pa.table({k: [row.get(k) for row in rows] for k in fields})
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise DataError(f"{path}: rows do not fit one Parquet schema ({' '.join(str(e).split())[:200]})") from None
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)
    return path


# -- a subset and its manifest, side by side ---------------------------------------------------
MANIFEST_SUFFIX = ".manifest.json"


def manifest_beside(rows_path: str | Path) -> Path:
    """Where the manifest of a subset written to ``rows_path`` goes: ``<name>.manifest.json`` beside it."""
    rows_path = Path(rows_path)
    return rows_path.with_name(rows_path.stem + MANIFEST_SUFFIX)


def rows_beside(manifest_path: str | Path, fmt: str) -> Path:
    """The default export path of a manifest: ``<name>.<fmt>`` for ``<name>.manifest.json`` (infosift select),
    ``subset.<fmt>`` beside a pipeline's ``manifest.json``."""
    manifest_path = Path(manifest_path)
    if manifest_path.name.endswith(MANIFEST_SUFFIX):
        return manifest_path.with_name(manifest_path.name[: -len(MANIFEST_SUFFIX)] + f".{fmt}")
    return manifest_path.with_name(f"subset.{fmt}")


PIPELINE_POOL = Path("data/download/pool.jsonl")


def export_selection(
    manifest_path: str | Path,
    fmt: str,
    data: str | Path | None = None,
    out: str | Path | None = None,
    prompt_field: str | None = None,
    response_field: str | None = None,
) -> tuple[Path, int]:
    """Write the rows a manifest chose, in its order, from ``data`` to ``out``; return (out, rows written).

    ``data`` defaults to what the manifest records (``info.data`` of an ``infosift select`` manifest), then the
    pipeline's pool (data/download/pool.jsonl under the current directory). ``out`` defaults to rows_beside.
    Field names default to those the manifest records (see read_source).
    """
    from infosift.manifest import read_manifest

    manifest_path = Path(manifest_path)
    fmt = output_format(manifest_path, fmt)
    out = Path(out) if out is not None else rows_beside(manifest_path, fmt)
    if out.suffix.lstrip(".") != fmt:
        raise DataError(f"{out}: the suffix does not match --format {fmt}")
    manifest = read_manifest(manifest_path)
    info = manifest.get("info") or {}
    if data is None:
        data = info.get("data") or (PIPELINE_POOL if PIPELINE_POOL.is_file() else None)
    if data is None:
        raise DataError(f"{manifest_path}: records no data file; name the data the selection was made from")
    fields = (prompt_field or info.get("prompt_field"), response_field or info.get("response_field"))
    source = read_source(data, *fields, info.get("split", "train"))
    if out.resolve() == source.path.resolve():
        raise DataError(f"{out}: this is the data itself; write the subset elsewhere")
    rows = chosen_rows(manifest["ids"], source.rows, str(manifest_path), source.path)
    return write_rows(out, rows, fmt), len(rows)
