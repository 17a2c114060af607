"""GIP's incremental greedy must match a brute force that recomputes tr(Q P_S Qᵀ) from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from infosift.features import TokenFeatures
from infosift.select import SelectionError, get_selector
from infosift.select.gip import greedy_projection, score_queries, sentence_embeddings


def brute_objective(emb: np.ndarray, queries: np.ndarray, chosen: list[int], ridge: float) -> float:
    """tr(Q P_S Qᵀ) with P_S = F_Sᵀ(F_S F_Sᵀ + λI)⁻¹F_S built explicitly as a d×d matrix."""
    if not chosen:
        return 0.0
    fs = emb[chosen]
    proj = fs.T @ np.linalg.inv(fs @ fs.T + ridge * np.eye(len(chosen))) @ fs
    return float(np.trace(queries @ proj @ queries.T))


def brute_greedy(emb, queries, budget, ridge):
    chosen, gains = [], []
    for _ in range(budget):
        base = brute_objective(emb, queries, chosen, ridge)
        cand = [i for i in range(len(emb)) if i not in chosen]
        vals = [brute_objective(emb, queries, chosen + [i], ridge) - base for i in cand]
        best = int(np.argmax(vals))
        chosen.append(cand[best])
        gains.append(vals[best])
    return np.array(chosen), np.array(gains)


def random_features(rng, n, d, scale=1.0) -> TokenFeatures:
    return TokenFeatures.from_list([scale * rng.normal(size=(rng.integers(1, 6), d)) for _ in range(n)])


@pytest.mark.parametrize("ridge", [0.05, 1.0, 10.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_match_brute_force(ridge, seed):
    rng = np.random.default_rng(seed)
    pool, targets = random_features(rng, 40, 8), random_features(rng, 5, 8)
    res = get_selector("gip", ridge=ridge).select(pool, budget=12, targets=targets)
    emb, q = sentence_embeddings(pool), sentence_embeddings(targets)
    idx, gains = brute_greedy(emb, q, 12, ridge)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.gains, gains, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.info["objective"], brute_objective(emb, q, list(idx), ridge), rtol=1e-8)


def test_budget_beyond_dimension_and_gains_diminish():
    """|S| > d: the span is full, only the ridge shrinkage is left to reduce; gains stay exact."""
    rng = np.random.default_rng(3)
    pool, targets = random_features(rng, 30, 4), random_features(rng, 3, 4)
    res = get_selector("gip", ridge=0.5).select(pool, budget=15, targets=targets)
    emb, q = sentence_embeddings(pool), sentence_embeddings(targets)
    idx, gains = brute_greedy(emb, q, 15, 0.5)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.gains, gains, rtol=1e-6, atol=1e-9)
    assert np.all(np.diff(res.gains) <= 1e-9)  # trace objective of a ridge projection: diminishing returns


def test_scores_query_is_centred_cross_covariance_and_matches_brute_force():
    rng = np.random.default_rng(4)
    pool = random_features(rng, 35, 6)
    sc = rng.normal(size=(35, 2))
    emb = sentence_embeddings(pool)
    q = score_queries(emb, sc)
    np.testing.assert_allclose(q, (sc - sc.mean(0)).T @ emb)
    res = get_selector("gip", ridge=1.0).select(pool, budget=10, scores=sc)
    idx, gains = brute_greedy(emb, q, 10, 1.0)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.gains, gains, rtol=1e-7, atol=1e-9)
    shifted = get_selector("gip", ridge=1.0).select(pool, budget=10, scores=sc + 100.0)
    np.testing.assert_array_equal(shifted.indices, res.indices)  # an offset in the scores changes nothing


def test_gram_column_mode_equals_precomputed_gram():
    rng = np.random.default_rng(5)
    emb, q = rng.normal(size=(60, 7)), rng.normal(size=(4, 7))
    a = greedy_projection(emb, q, 20, 0.3)[:2]
    b = greedy_projection(emb, q, 20, 0.3, max_gram_bytes=0)[:2]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-10)


def test_duplicates_and_zero_rows_are_safe():
    """Copies of a chosen sentence give a Schur pivot of exactly λ: no division by zero, no repeats."""
    rng = np.random.default_rng(6)
    base = rng.normal(size=(3, 5))
    emb = np.concatenate([base, base, np.zeros((2, 5))])
    idx, gains, _ = greedy_projection(emb, rng.normal(size=(2, 5)), 8, 1e-3)
    assert len(set(idx.tolist())) == 8
    assert np.isfinite(gains).all() and gains.min() >= -1e-9


def test_bad_requests_raise():
    rng = np.random.default_rng(7)
    pool, targets = random_features(rng, 10, 4), random_features(rng, 2, 4)
    with pytest.raises(SelectionError, match="exactly one"):
        get_selector("gip").select(pool, budget=3)
    with pytest.raises(SelectionError, match="exactly one"):
        get_selector("gip").select(pool, budget=3, targets=targets, scores=np.ones(10))
    with pytest.raises(SelectionError, match="larger than the pool"):
        get_selector("gip").select(pool, budget=11, targets=targets)
    with pytest.raises(SelectionError, match="shape"):
        get_selector("gip").select(pool, budget=3, scores=np.ones(9))
    with pytest.raises(SelectionError, match="constant"):
        get_selector("gip").select(pool, budget=3, scores=np.ones(10))
    with pytest.raises(SelectionError, match="dim"):
        get_selector("gip").select(pool, budget=3, targets=random_features(rng, 2, 5))
    with pytest.raises(SelectionError, match="ridge"):
        get_selector("gip", ridge=0.0)


def test_ma_scores_aligned_to_ids_with_clear_errors(tmp_path):
    from infosift.queries.attribute_scores import load_attribute_scores

    path = tmp_path / "ma.json"
    path.write_text('{"b": {"help": 2, "acc": 1}, "a": {"help": 1, "acc": 3}, "c": {"help": 0}}')
    np.testing.assert_allclose(load_attribute_scores(path, ["a", "b"], {"help": 0.5, "acc": 2.0}), [6.5, 3.0])
    with pytest.raises(ValueError, match="1 of 2 ids have no scores, e.g. z"):
        load_attribute_scores(path, ["a", "z"], {"help": 1.0})
    with pytest.raises(ValueError, match="id c has no attribute 'acc'"):
        load_attribute_scores(path, ["a", "c"], {"acc": 1.0})
    with pytest.raises(ValueError, match="weights are empty"):
        load_attribute_scores(path, ["a"], {})
