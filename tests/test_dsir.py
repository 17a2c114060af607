"""DSIR: weights from data_selection favour target-like text and stay aligned; the selector ranks and fills."""

from __future__ import annotations

import numpy as np
import pytest
from data_selection.hashed_ngram_dsir import get_ngram_counts

from infosift.features import TokenFeatures
from infosift.queries.dsir_weights import dsir_log_weights
from infosift.select import SelectionError, get_selector

MATH = [
    "Natalia sold 48 clips in April and half as many clips in May. How many clips did she sell altogether?",
    "Weng earns 12 dollars an hour for babysitting. How many dollars did she earn for 50 minutes?",
    "Betty has half of the money she needs for a new wallet. How much more money does she need?",
    "James writes a 3 page letter to 2 friends twice a week. How many pages does he write a year?",
]
OFF = [
    "The symphony opened with a slow movement for strings and a solo oboe.",
    "Rain is expected across the northern coast tonight with strong winds.",
    "The museum reopened its east wing after a long restoration of the frescoes.",
]


def test_target_like_texts_weigh_more(tmp_path):
    rng = np.random.default_rng(0)
    names = ["Tom", "Ana", "Li", "Sam", "Maya", "Omar"]
    target = [
        t.replace("48", str(rng.integers(2, 99))).replace("12", str(rng.integers(2, 99))).replace("Natalia", n)
        for t in MATH
        for n in names
    ]
    pool = MATH + OFF
    w = dsir_log_weights(pool, target, tmp_path, ngrams=2, num_buckets=4096)
    assert w.shape == (len(pool),) and w.dtype == np.float64 and np.isfinite(w).all()
    assert w[: len(MATH)].min() > w[len(MATH) :].max()


def reference_weights(pool: list[str], target: list[str], ngrams: int, buckets: int) -> np.ndarray:
    """The DSIR formula by hand on the package's own hashed n-gram counts, row by row."""
    c = np.array([get_ngram_counts(t, n=ngrams, num_buckets=buckets) for t in pool], dtype=np.float64)
    q = sum(get_ngram_counts(t, n=ngrams, num_buckets=buckets) for t in target).astype(np.float64)
    log_diff = np.log(q / q.sum() + 1e-8) - np.log(c.sum(0) / c.sum() + 1e-8)
    return c @ log_diff


def test_weights_align_with_input_even_for_short_texts(tmp_path):
    target = ["cat dog", "cat cat dog", "dog bird"]
    pool = ["cat", "", "x", "cat dog", "stocks fell sharply", "dog\nline two", "a", "cat cat", "bird", "dog dog dog"]
    w = dsir_log_weights(pool, target, tmp_path, num_buckets=512)
    assert w.shape == (len(pool),)
    assert len(set(np.round(w, 6).tolist())) >= 8  # distinct enough that a shuffled row would show
    np.testing.assert_allclose(w, reference_weights(pool, target, 2, 512), rtol=1e-9, atol=1e-9)
    assert w[1] == 0.0  # the empty text has no n-grams


def test_empty_target_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="target"):
        dsir_log_weights(["a b"], [], tmp_path)
    with pytest.raises(ValueError, match="no tokens"):
        dsir_log_weights(["a b"], ["", "  "], tmp_path)


def feats(n: int, costs: np.ndarray | None = None, nan: bool = False) -> TokenFeatures:
    rng = np.random.default_rng(0)
    f = TokenFeatures.from_list([rng.standard_normal((2, 3)) for _ in range(n)])
    values = f.values.copy()
    if nan:
        values[:] = np.nan
    return TokenFeatures(values, f.offsets, f.ids, costs=costs)


def test_topk_order_ties_by_lowest_index():
    scores = np.array([0.5, 2.0, -1.0, 2.0, 0.5, 3.0])
    res = get_selector("dsir").select(feats(6), 4, scores=scores)
    assert res.indices.tolist() == [5, 1, 3, 0]
    assert res.gains is None
    assert res.info == {"unit": "examples", "budget": 4, "used": 4, "n_chosen": 4, "mode": "topk"}


def test_sample_mode_is_seeded():
    scores = np.random.default_rng(3).normal(size=200)
    sel = get_selector("dsir", mode="sample")
    a = sel.select(feats(200), 50, seed=1, scores=scores).indices
    assert a.tolist() == sel.select(feats(200), 50, seed=1, scores=scores).indices.tolist()
    assert a.tolist() != sel.select(feats(200), 50, seed=2, scores=scores).indices.tolist()
    assert len(set(a.tolist())) == 50


def test_sample_mode_follows_the_weights():
    scores = np.zeros(100)
    scores[:10] = 5.0  # w = e^5 ~ 148 times heavier
    hits = [
        np.isin(
            get_selector("dsir", mode="sample").select(feats(100), 10, seed=s, scores=scores).indices, np.arange(10)
        ).sum()
        for s in range(20)
    ]
    assert np.mean(hits) > 7


@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_token_budget_is_filled_never_exceeded(mode):
    rng = np.random.default_rng(4)
    costs = rng.integers(1, 40, size=80)
    scores = rng.normal(size=80)
    budget = 300
    res = get_selector("dsir", mode=mode).select(feats(80, costs), budget, seed=0, scores=scores, unit="tokens")
    used = int(costs[res.indices].sum())
    assert used <= budget and res.info["used"] == used and res.info["unit"] == "tokens"
    left = np.setdiff1d(np.arange(80), res.indices)
    assert not (costs[left] <= budget - used).any()  # filled: nothing unchosen still fits


@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_examples_unit_picks_exactly_budget_and_ignores_feature_values(mode):
    scores = np.random.default_rng(5).normal(size=30)
    sel = get_selector("dsir", mode=mode)
    clean = sel.select(feats(30), 12, seed=3, scores=scores).indices
    dirty = sel.select(feats(30, nan=True), 12, seed=3, scores=scores).indices
    assert len(clean) == 12 and len(set(clean.tolist())) == 12
    assert clean.tolist() == dirty.tolist()


@pytest.mark.parametrize(
    ("scores", "message"),
    [(None, "dsir needs scores"), (np.zeros(4), "shape (5,)"), (np.array([0, 1, np.nan, 0, 0]), "finite")],
)
def test_bad_scores_are_selection_errors(scores, message):
    with pytest.raises(SelectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_selector("dsir").select(feats(5), 2, scores=scores)


def test_bad_mode_and_budget():
    with pytest.raises(SelectionError, match="dsir mode"):
        get_selector("dsir", mode="nope")
    with pytest.raises(SelectionError, match="larger than the pool"):
        get_selector("dsir").select(feats(5), 6, scores=np.zeros(5))
