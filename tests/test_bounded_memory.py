"""Pooling a memory-mapped pool reads it in chunks: density, sentence_od and GIP no longer copy every token row to
float32 (2x the file) before they start."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from infosift.features import TokenFeatures


def pool(lengths: list[int], d: int, seed: int = 0, values: np.ndarray | None = None) -> TokenFeatures:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if values is None:
        values = np.random.default_rng(seed).standard_normal((int(offsets[-1]), d)).astype(np.float16)
    return TokenFeatures(values, offsets, [f"s{i}" for i in range(len(lengths))])


def reference(f: TokenFeatures) -> np.ndarray:
    """Pooling as it was before chunking, the whole pool at once: results must not move by a bit (selections and
    dvc.lock stay valid)."""
    vals = np.asarray(f.values, dtype=np.float32)
    full = np.flatnonzero(f.lengths)
    out = np.zeros((len(f), f.dim), dtype=np.float32)
    out[full] = np.add.reduceat(vals, f.offsets[:-1][full], axis=0) / f.lengths[full][:, None]
    return out


@pytest.mark.parametrize("chunk_bytes", [1, 100, 4096, 1 << 28])
def test_chunked_pooling_equals_pooling_each_sentence(chunk_bytes):
    lengths = [0, 3, 1, 0, 0, 7, 2, 5, 0, 1, 4, 0]  # empty sentences first, between and last
    f = pool(lengths, d=8)
    got = f.mean_pooled(chunk_bytes=chunk_bytes)
    assert got.dtype == np.float32 and got.shape == (len(lengths), 8)
    np.testing.assert_array_equal(got, reference(f))
    assert not got[[0, 3, 4, 8, 11]].any()


def test_pooling_a_memory_mapped_pool_stays_within_the_result_plus_a_chunk(tmp_path):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 40, size=2000).tolist()
    d, chunk = 64, 1 << 20
    path = tmp_path / "values.npy"
    np.save(path, rng.standard_normal((sum(lengths), d)).astype(np.float16))
    f = pool(lengths, d, values=np.load(path, mmap_mode="r"))
    whole_f32 = sum(lengths) * d * 4  # what the old pooling copied before it started
    result = len(lengths) * d * 4
    tracemalloc.start()
    try:
        got = f.mean_pooled(chunk_bytes=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert whole_f32 > result + 4 * chunk  # the bound below is one the whole copy could not meet
    assert peak < result + 4 * chunk, (peak, result, chunk)
    np.testing.assert_array_equal(got, reference(f))


def test_weighted_fishersft_reads_weights_on_the_fly_and_selects_as_a_whole_copy_did(tmp_path):
    """fishersft-err/-unc/-len used to hold x * w for every token row (float32: 2x a float16 file); now each sentence
    is weighted as the greedy reads it. Same products, so the same choices and gains, bit for bit."""
    from infosift.select import get_selector
    from infosift.select.fishersft import information_weights

    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 60, size=1500).tolist()
    d, tokens = 64, sum(lengths)
    path = tmp_path / "values.npy"
    np.save(path, rng.standard_normal((tokens, d)).astype(np.float16))
    p_next = rng.uniform(0, 1, tokens).astype(np.float32)
    f = pool(lengths, d, values=np.load(path, mmap_mode="r"))
    f.p_next, f.p_sqnorm = p_next, (p_next**2 + rng.uniform(0, 0.1, tokens)).astype(np.float32)

    def peak_of(weighting: str):
        tracemalloc.start()
        try:
            res = get_selector("fishersft", ridge=1.0, weighting=weighting).select(f, budget=15, seed=0)
            return res, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    _, plain = peak_of("none")  # the greedy's own state: gain batches, the factor
    got, weighted = peak_of("error")
    whole_f32 = tokens * d * 4
    assert weighted < plain + whole_f32 / 2, (weighted, plain, whole_f32)  # the per-row weights, no copy of the pool

    w = information_weights(f, "error")
    copy = f.with_values(np.asarray(f.values, dtype=np.float32) * w[:, None])  # what the stage used to hold
    want = get_selector("fishersft", ridge=1.0).select(copy, budget=15, seed=0)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.gains, want.gains)
