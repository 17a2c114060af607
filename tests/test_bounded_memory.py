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


def mapped_pool(tmp_path, seed: int, n: int, d: int):
    """(rng, lengths, features) of ``n`` random sentences whose float16 values are memory-mapped from disk."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=n).tolist()
    path = tmp_path / "values.npy"
    np.save(path, rng.standard_normal((sum(lengths), d)).astype(np.float16))
    return rng, lengths, pool(lengths, d, values=np.load(path, mmap_mode="r"))


def test_pooling_a_memory_mapped_pool_stays_within_the_result_plus_a_chunk(tmp_path):
    rng, lengths, f = mapped_pool(tmp_path, seed=1, n=2000, d=64)
    d, chunk = 64, 1 << 20
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


def test_a_view_reads_the_rows_a_subset_copies():
    """TokenFeatures.view gathers rows as they are read; everything a selector reads equals subset()'s copy."""
    rng = np.random.default_rng(3)
    lengths = [0, 3, 1, 0, 7, 2, 5, 0, 1, 4, 6, 2]
    f = pool(lengths, d=6, seed=3)
    f.p_next = rng.uniform(0, 1, len(f.values)).astype(np.float32)
    f.costs = np.maximum(f.lengths, 1) + 2
    for idx in ([4, 5, 6], [9, 1, 4, 0, 11], [2], list(range(len(lengths)))[::-1]):
        got, want = f.view(idx), f.subset(idx)
        assert got.ids == want.ids and got.dim == want.dim and len(got.values) == len(want.values)
        np.testing.assert_array_equal(got.offsets, want.offsets)
        np.testing.assert_array_equal(got.costs, want.costs)
        np.testing.assert_array_equal(got.p_next, want.p_next)
        np.testing.assert_array_equal(np.asarray(got.values), want.values)
        for i in range(len(idx)):
            np.testing.assert_array_equal(got.sentence(i), want.sentence(i))
        for chunk in (1, 50, 1 << 20):
            np.testing.assert_array_equal(got.mean_pooled(chunk), want.mean_pooled(chunk))
        np.testing.assert_array_equal(got.view([0]).values[:], want.subset([0]).values)


def test_a_view_of_a_mapped_pool_costs_its_row_index_and_is_pooled_in_chunks(tmp_path):
    rng, lengths, f = mapped_pool(tmp_path, seed=4, n=3000, d=64)
    d, chunk = 64, 1 << 16
    keep = np.sort(rng.choice(len(lengths), size=2000, replace=False))
    tracemalloc.start()
    try:
        v = f.view(keep)
        _, made = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = v.mean_pooled(chunk_bytes=chunk)
        _, pooled = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rows = int(f.lengths[keep].sum())
    copy = rows * d * 2  # what subset() holds: the kept rows, float16
    assert made < 3 * rows * 8 < copy / 2, (made, rows, copy)  # the row index (and its parts), not the rows
    assert pooled < made + got.nbytes + 4 * chunk * 4, (pooled, got.nbytes, chunk)  # float32 chunks of 4 x 16-bit
    np.testing.assert_array_equal(got, f.subset(keep).mean_pooled())


class Spy:
    """A distributable selector that records what it was handed and takes the first examples that fit."""

    name, distributable, deterministic = "spy", True, True

    def __init__(self) -> None:
        self.seen: list[type] = []

    def select(self, features, budget, seed=0, targets=None, scores=None, unit="examples"):  # noqa: ANN001, ANN201
        from infosift.select.base import SelectionResult

        self.seen.append(type(features.values))
        n = min(budget, len(features))
        return SelectionResult(np.arange(n), np.ones(n), {})


@pytest.mark.parametrize("make", ["greedi", "filter"])
def test_greedi_parts_and_the_filter_hand_views_of_the_pool_and_pick_as_copies_did(make, monkeypatch):
    """GreeDi's parts and the filter's kept examples used to be subset() copies (a mapped pool then held a second
    copy of most of itself, in its own dtype); now they are views, read as the selector reads them."""
    from infosift.features import GatheredRows
    from infosift.select import get_selector
    from infosift.select.filtered import Filtered
    from infosift.select.greedi import Distributed

    rng = np.random.default_rng(5)
    f = pool(rng.integers(1, 12, size=120).tolist(), d=6, seed=5)
    quality = rng.standard_normal(len(f))

    def build(inner):
        return Distributed(inner, 3) if make == "greedi" else Filtered(inner, quality, 0.25)

    spy = Spy()
    build(spy).select(f, budget=5, seed=1)
    assert spy.seen and all(t is GatheredRows for t in spy.seen), spy.seen
    for name in ("fishersft", "sentence_od"):
        got = build(get_selector(name, ridge=1.0)).select(f, budget=6, seed=1, unit="tokens")
        monkeypatch.setattr(TokenFeatures, "view", TokenFeatures.subset)  # the copies they replaced
        want = build(get_selector(name, ridge=1.0)).select(f, budget=6, seed=1, unit="tokens")
        monkeypatch.undo()
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.gains, want.gains)


def test_gip_on_a_large_pool_reads_gram_columns_instead_of_holding_m_squared():
    """The m x m Gram is precomputed only under MAX_GRAM_BYTES: at a 2 GiB pool's 14,563 sentences it was 1.7 GB
    beside the mapped file; past the cap each step reads one column, with the same picks."""
    from infosift.select.gip import greedy_projection

    m = 14563  # sentences of 128 tokens x 576 float16 in 2 GiB (bench/memory_bench.py's default pool)
    rng = np.random.default_rng(6)
    emb, q = rng.standard_normal((m, 8)), rng.standard_normal((3, 8))
    tracemalloc.start()
    try:
        idx, gains, _ = greedy_projection(emb, q, 6, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * m * m / 8, (peak, 8 * m * m)
    small = greedy_projection(emb[:500], q, 6, 1.0)  # under the cap: the precomputed Gram, as before
    np.testing.assert_array_equal(small[0], greedy_projection(emb[:500], q, 6, 1.0, max_gram_bytes=0)[0])
    assert len(idx) == 6 and np.all(gains > 0)


@pytest.mark.parametrize("weighting", ["none", "length"])
def test_the_greedy_keeps_its_cache_of_k_under_the_cap_and_picks_the_same(weighting, monkeypatch):
    """Flat gains (length weighting) make the lazy greedy re-evaluate most of the pool each step; the M x M K_i it
    caches for updates grew with the pool. Capped, the picks are the same and the gains equal up to round-off."""
    import infosift.select.incremental as inc
    from infosift.select import get_selector

    rng = np.random.default_rng(7)
    lengths = rng.integers(5, 30, size=300).tolist()
    f = pool(lengths, d=64, values=rng.standard_normal((sum(lengths), 64)))
    held = []
    gains = inc.GreedyState.gains

    def spy(self, idx):  # noqa: ANN001, ANN202
        out = gains(self, idx)
        assert self.cache_bytes == sum(k.nbytes for _, k in self.cache.values())
        held.append(self.cache_bytes)
        return out

    monkeypatch.setattr(inc.GreedyState, "gains", spy)
    want = get_selector("fishersft", ridge=1.0, weighting=weighting).select(f, budget=12)
    cap = max(held) // 4
    assert cap > 0
    held.clear()
    monkeypatch.setattr(inc, "MAX_CACHE_BYTES", cap)
    got = get_selector("fishersft", ridge=1.0, weighting=weighting).select(f, budget=12)
    assert max(held) <= cap
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.gains, want.gains, rtol=1e-9)
