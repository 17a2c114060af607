"""FisherSFT lazy greedy == plain exact greedy (brute force), plus the objective's invariants and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from infosift.features import TokenFeatures
from infosift.select import SelectionError, get_selector


def ragged_pool(n: int, d: int, seed: int, max_len: int = 9) -> TokenFeatures:
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(d)) ** -0.5
    return TokenFeatures.from_list([rng.standard_normal((rng.integers(1, max_len), d)) * scale for _ in range(n)])


def gain(x: np.ndarray, v: np.ndarray) -> float:
    """Exact gain written the long way: log det(V + X^T X) - log det V."""
    return np.linalg.slogdet(v + x.T @ x)[1] - np.linalg.slogdet(v)[1]


def brute_greedy(f: TokenFeatures, budget: int, ridge: float) -> tuple[list[int], list[float]]:
    v, chosen, gains = ridge * np.eye(f.dim), [], []
    for _ in range(budget):
        g = [-np.inf if i in chosen else gain(f.sentence(i).astype(np.float64), v) for i in range(len(f))]
        best = int(np.argmax(g))  # lowest index on ties
        chosen.append(best)
        gains.append(g[best])
        v += f.sentence(best).T @ f.sentence(best)
    return chosen, gains


@pytest.mark.parametrize("seed,n,d,budget,ridge", [(0, 60, 8, 20, 1.0), (1, 80, 12, 30, 0.1), (2, 50, 30, 25, 2.0)])
def test_equals_brute_force(seed, n, d, budget, ridge):
    f = ragged_pool(n, d, seed)
    res = get_selector("fishersft", ridge=ridge, batch=4, refactor_every=7).select(f, budget)
    ref_idx, ref_gains = brute_greedy(f, budget, ridge)
    assert res.indices.tolist() == ref_idx
    np.testing.assert_allclose(res.gains, ref_gains, rtol=1e-9, atol=1e-9)


def test_gains_sum_to_objective_and_diminish():
    f = ragged_pool(120, 10, seed=3)
    ridge = 0.5
    res = get_selector("fishersft", ridge=ridge).select(f, 60)
    chosen = f.subset(res.indices)
    v = ridge * np.eye(f.dim) + chosen.values.T @ chosen.values
    objective = np.linalg.slogdet(v)[1] - f.dim * np.log(ridge)
    assert res.gains.sum() == pytest.approx(objective, rel=1e-10)
    assert np.all(res.gains > 0)  # monotone: every sentence adds information
    assert np.all(np.diff(res.gains) <= 1e-9)  # greedy gains of a submodular objective never grow
    assert len(set(res.indices.tolist())) == 60


def test_cached_gains_are_upper_bounds():
    """Submodularity, checked directly: a sentence's gain only shrinks as V grows."""
    f = ragged_pool(30, 6, seed=4)
    v = np.eye(f.dim)
    before = [gain(f.sentence(i), v) for i in range(len(f))]
    v += f.sentence(0).T @ f.sentence(0) + f.sentence(1).T @ f.sentence(1)
    after = [gain(f.sentence(i), v) for i in range(len(f))]
    assert np.all(np.asarray(after) <= np.asarray(before) + 1e-12)


def test_budget_equal_to_pool_returns_all_and_above_is_an_error():
    f = ragged_pool(15, 5, seed=5)
    sel = get_selector("fishersft")
    assert sorted(sel.select(f, 15).indices.tolist()) == list(range(15))
    with pytest.raises(SelectionError, match="larger than the pool"):
        sel.select(f, 16)
    with pytest.raises(SelectionError, match="ridge"):
        get_selector("fishersft", ridge=0.0).select(f, 3)


def test_zero_tokens_and_empty_sentences_have_zero_gain():
    rng = np.random.default_rng(6)
    sents = [np.zeros((4, 5)), rng.standard_normal((3, 5)), np.zeros((0, 5)), rng.standard_normal((2, 5))]
    res = get_selector("fishersft").select(TokenFeatures.from_list(sents), 4)
    assert res.indices.tolist()[2:] == [0, 2]  # both worthless ones last, lowest index first
    np.testing.assert_allclose(res.gains[2:], 0.0, atol=1e-12)


def test_duplicate_sentence_is_worth_less_the_second_time():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 6))
    sents = [rng.standard_normal((2, 6)) * 0.1, a, a.copy(), rng.standard_normal((3, 6)) * 0.5]
    f = TokenFeatures.from_list(sents)
    res = get_selector("fishersft").select(f, 4)
    ref_idx, _ = brute_greedy(f, 4, 1.0)
    assert res.indices.tolist() == ref_idx
    assert res.indices[0] == 1  # the tie between the copies breaks on the lower index
    second = res.gains[res.indices.tolist().index(2)]
    assert second < res.gains[0]


def test_dimension_larger_than_all_tokens():
    f = ragged_pool(6, 64, seed=8, max_len=4)  # at most 18 tokens in R^64: V stays rank-deficient + ridge
    res = get_selector("fishersft").select(f, 6)
    ref_idx, ref_gains = brute_greedy(f, 6, 1.0)
    assert res.indices.tolist() == ref_idx
    np.testing.assert_allclose(res.gains, ref_gains, rtol=1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_name_the_sentence(bad):
    f = ragged_pool(5, 4, seed=9)
    f.values[f.offsets[3]] = bad
    for name in ("fishersft", "sentence_od", "density"):
        with pytest.raises(SelectionError, match="sentence 3"):
            get_selector(name).select(f, 2)


def test_torch_path_matches_numpy():
    """The CUDA path runs the same logdet.py code on torch tensors; check it here on CPU tensors."""
    import torch

    from infosift.select.incremental import woodbury_factor
    from infosift.select.logdet import gains, inverse_spd

    rng = np.random.default_rng(10)
    x = rng.standard_normal((5, 4, 7))
    a = rng.standard_normal((7, 7))
    vinv = inverse_spd(np.eye(7) + a @ a.T)
    t = torch.from_numpy
    np.testing.assert_allclose(gains(t(x), t(vinv), 1.0).numpy(), gains(x, vinv, 1.0), rtol=1e-12)
    np.testing.assert_allclose(gains(t(x), None, 2.0).numpy(), gains(x, None, 2.0), rtol=1e-12)
    w_np, g_np = woodbury_factor(vinv, x[0])
    w_t, g_t = woodbury_factor(t(vinv), t(x[0]))
    np.testing.assert_allclose(w_t.numpy(), w_np, rtol=1e-10, atol=1e-12)
    # V^-1 - W W^T is the inverse of V + X^T X
    np.testing.assert_allclose(vinv - w_np @ w_np.T, np.linalg.inv(np.linalg.inv(vinv) + x[0].T @ x[0]), atol=1e-10)
    assert g_t == pytest.approx(g_np, rel=1e-12)
    assert g_np == pytest.approx(gain(x[0], np.linalg.inv(vinv)), rel=1e-10)
