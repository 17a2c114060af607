"""DSIR importance weights (Xie et al. 2023) over hashed n-grams, computed by ``data_selection``.

For a text x with hashed n-gram counts c(x) in B buckets (unigrams up to ``ngrams``-grams, lower-cased,
NLTK word-punct tokens), DSIR fits two bag-of-n-gram models, q over the target slice and p over the raw
pool, and weighs x by

    log w(x) = log q(x) - log p(x) = sum_j c_j(x) * (log(q_j + 1e-8) - log(p_j + 1e-8)).

Resampling the pool with probability proportional to w(x) matches the target's n-gram distribution.
DSIR is a baseline here because it needs no model at all: if a selector reading token embeddings cannot
beat "look like the target slice", its extra cost buys nothing.

What the package is used for: featurising, fitting p and q (over *all* pool tokens: its default 'auto'
stops counting the pool early) and computing the weights. What it is not used for: its ``resample``
(it filters by ``min_example_length``, draws with the global ``np.random`` and writes JSONL shards; our
selector ranks and fills a budget itself, see select/dsir.py). ``compute_importance_weights`` saves one
``<overall_idx>.npy`` per virtual shard, and shard k of K holds rows k, k+K, ...; we read the shards back
through the package's own shard parameters and interleave them into input order.

It runs in-process (``num_proc=1``): under nltk 3.10 (ReDoS-guarded regexes) the package's module-level
tokenizer, once used, holds a regex whose timeout sentinel does not survive pickling, so joblib workers
fail with "timeout not float or None". One process weighs a few thousand examples in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _write_texts(path: Path, texts: list[str]) -> None:
    # ensure_ascii escapes newlines and exotic line separators: one text per line, always
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def dsir_log_weights(
    pool_texts: list[str],
    target_texts: list[str],
    work_dir: str | Path,
    ngrams: int = 2,
    num_buckets: int = 10000,
) -> np.ndarray:
    """(len(pool_texts),) float64 DSIR log importance weights, aligned with ``pool_texts``.

    ``work_dir`` receives the JSONL inputs (one {"text": ...} per line) and the package's cache.
    """
    from data_selection import HashedNgramDSIR

    if not pool_texts:
        raise ValueError("dsir: the pool is empty")
    if not target_texts:
        raise ValueError("dsir: the target slice is empty")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    pool_path, target_path = work / "pool.jsonl", work / "target.jsonl"
    _write_texts(pool_path, list(pool_texts))
    _write_texts(target_path, list(target_texts))

    dsir = HashedNgramDSIR(
        [str(pool_path)],
        [str(target_path)],
        cache_dir=str(work / "cache"),
        num_proc=1,  # see the module docstring
        ngrams=ngrams,
        num_buckets=num_buckets,
        min_example_length=0,  # only resample() filters, but never let it drop a row
    )
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty target divides 0 by 0: checked below
        dsir.fit_importance_estimator(num_tokens_to_fit="all")
    if not np.all(np.isfinite(dsir.log_diff)):
        raise ValueError("dsir: the target slice has no tokens (its n-gram distribution is undefined)")
    dsir.compute_importance_weights()

    n = len(pool_texts)
    out = np.full(n, np.nan)
    for shard in dsir._get_virtually_sharded_datasets(dsir.raw_datasets):
        w = np.load(dsir.log_importance_weights_dir / f"{shard['overall_idx']}.npy")
        rows = np.arange(shard["shard_idx"], n, shard["num_shards"])
        if len(w) != len(rows):
            raise RuntimeError(f"dsir: shard {shard['overall_idx']} holds {len(w)} weights, expected {len(rows)}")
        out[rows] = w
    if np.isnan(out).any():
        raise RuntimeError("dsir: some pool rows received no weight")
    return out
