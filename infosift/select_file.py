"""Select from a data file outside the pipeline (``infosift select``): normalize, embed, select, write the rows.

The same steps as the download, embed and select stages, on one source and without params.yaml: records and
ids as download makes them (infosift.data), token features of the base model (infosift.embed) cached under
``<cache>/features/<key>``, key = hash of the record ids (content hashes), the model's fingerprint and the
embedding settings, so a second selection from the same data and model embeds nothing. The chosen rows are
written as they were in the source (infosift.subset) with a manifest beside them in the pipeline's format
(infosift.manifest), which ``infosift export`` and the pipeline's readers take.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infosift.atomic import atomic_write_text
from infosift.errors import SelectionError
from infosift.features import TokenFeatures
from infosift.manifest import build_manifest, content_hash, path_sha256
from infosift.subset import chosen_rows, manifest_beside, output_format, read_source, write_rows

DEFAULT_MODEL = "bundled:smollm2-135m-instruct"  # the pipeline's default base model (params.yaml model.base_model)
QUERIES = ("scores",)  # query signals a lone data file can give: the pool's own self-scores (GIP)


def default_cache() -> Path:
    """``$INFOSIFT_CACHE``, else ``$XDG_CACHE_HOME/infosift`` (``~/.cache/infosift``): models and features."""
    if os.environ.get("INFOSIFT_CACHE"):
        return Path(os.environ["INFOSIFT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infosift"


@dataclass
class EmbedSettings:
    """How features are extracted (infosift.embed.embed_records): part of the cache key."""

    part: str = "response"
    max_length: int = 512
    batch_tokens: int = 4096
    shard_size: int = 64
    dtype: str = "float16"
    device: str | None = None

    def key(self) -> dict:
        return {"part": self.part, "max_length": self.max_length, "dtype": self.dtype}


def cached_features(records: list[dict], model_dir: Path, fingerprint: str, settings: EmbedSettings,
                    cache: Path, progress: bool = True) -> tuple[TokenFeatures, Path, bool]:  # fmt: skip
    """(features, their folder, whether they came from the cache) of ``records`` under the model.

    A folder is only ever complete (embed_records assembles it atomically); a killed run resumes from its shards.
    """
    from infosift.embed import FORMAT, embed_records

    key = content_hash({"ids": [r["id"] for r in records], "model": fingerprint, "format": FORMAT, **settings.key()})
    out = cache / "features" / key[:20]
    if (out / "meta.json").is_file():
        return TokenFeatures.load(out, mmap=True), out, True
    feats = embed_records(
        model_dir, records, out, part=settings.part, max_length=settings.max_length, batch_tokens=settings.batch_tokens,
        shard_size=settings.shard_size, device=settings.device, dtype=settings.dtype, progress=progress,
    )  # fmt: skip
    return feats, out, False


@dataclass
class Selected:
    """What ``select_file`` wrote: the rows file, its manifest and the manifest itself."""

    rows: Path
    manifest_path: Path
    manifest: dict
    cached: bool  # features came from the cache


def select_file(
    data: str | Path,
    out: str | Path,
    *,
    selector: str,
    budget: int,
    unit: str = "examples",
    seed: int = 0,
    params: dict | None = None,
    query: str | None = None,
    model: str | None = None,
    cache_dir: str | Path | None = None,
    prompt_field: str | None = None,
    response_field: str | None = None,
    split: str = "train",
    mirror_dir: str | Path | None = None,
    settings: EmbedSettings | None = None,
    progress: bool = True,
    log=print,
) -> Selected:
    """Select ``budget`` ``unit`` of ``data`` with the registered ``selector`` and write the chosen rows to ``out``.

    Everything that can be checked before the model loads is checked first (output format, selector and its
    params, the data, an example budget against the pool), so bad input costs no embedding; nothing is
    written unless the selection succeeded. ``model``: a bundled: name, local HF dir or hub id (default: the
    pipeline's base model). ``query``: "scores" gives GIP the pool's self-scores.
    """
    from infosift.models import model_fingerprint, resolve_base_model
    from infosift.select import get_selector
    from infosift.select.base import UNITS

    out = Path(out)
    fmt = output_format(out)
    if unit not in UNITS:
        raise SelectionError(f"budget unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if query is not None and query not in QUERIES:
        raise SelectionError(f"query {query!r}: a data file gives only {', '.join(QUERIES)}")
    params = dict(params or {})
    sel = get_selector(selector, **params)
    settings = settings or EmbedSettings()
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    source = read_source(data, prompt_field, response_field, split, mirror_dir, cache / "datasets")
    n = len(source.records)
    log(f"infosift select: {n} records from {source.path} (repeats dropped: {source.n_rows - n})")
    if unit == "examples" and not isinstance(budget, bool) and isinstance(budget, int) and budget > n:
        raise SelectionError(f"budget {budget} is larger than the pool ({n} examples)")
    model_dir = resolve_base_model(model or DEFAULT_MODEL, cache / "models")
    fingerprint = model_fingerprint(model_dir, cache_dir=cache / "models")
    feats, feats_dir, cached = cached_features(source.records, model_dir, fingerprint, settings, cache, progress)
    log(f"infosift select: features {'from the cache' if cached else 'embedded'} at {feats_dir}")
    extra = {}
    if query == "scores":
        extra["scores"] = np.load(feats_dir / "self_scores.npy", allow_pickle=False)
    t0 = time.perf_counter()
    result = sel.select(feats, budget=budget, seed=seed, unit=unit, **extra)
    seconds = time.perf_counter() - t0
    indices = np.asarray(result.indices, dtype=np.int64)
    if len(indices) == 0:
        raise SelectionError(f"budget {budget} {unit} fits no example")
    info = {k: v for k, v in result.info.items() if isinstance(v, str | int | float | bool) and not k.endswith("_s")}
    manifest = build_manifest(
        variant=selector,
        selector=selector,
        params={**params, "query": query},
        budget=budget,
        seed=seed,
        ids=feats.ids,
        indices=indices,
        gains=None if result.gains is None else np.asarray(result.gains),
        inputs={"data": path_sha256(source.path), "features": path_sha256(feats_dir), "model": fingerprint},
        seconds=seconds,
        info={
            **info,
            "unit": unit,
            "train_tokens": int(feats.token_costs[indices].sum()),
            "data": str(source.path.resolve()),
            "split": split,
            "prompt_field": prompt_field,
            "response_field": response_field,
            "model": model or DEFAULT_MODEL,
        },
    )
    manifest_path = manifest_beside(out)
    rows = chosen_rows(manifest["ids"], source.rows, str(manifest_path), source.path)
    write_rows(out, rows, fmt)
    try:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    except BaseException:  # rows without their manifest would look like a finished selection
        out.unlink(missing_ok=True)
        raise
    log(
        f"infosift select: {selector} chose {len(rows)} of {n} examples ({manifest['info']['train_tokens']} tokens; "
        f"budget {budget} {unit}) in {seconds:.2f}s -> {out}, {manifest_path}"
    )
    return Selected(out, manifest_path, manifest, cached)
