"""SentenceOD and density sampling: checked against brute force and known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from infosift.features import TokenFeatures
from infosift.select import SelectionError, get_selector
from infosift.select.density import knn_mean_distance


def pool(n: int, d: int, seed: int) -> TokenFeatures:
    rng = np.random.default_rng(seed)
    return TokenFeatures.from_list([rng.standard_normal((rng.integers(1, 6), d)) for _ in range(n)])


def test_sentence_od_equals_rank_one_brute_force():
    f = pool(70, 9, seed=0)
    s = f.mean_pooled().astype(np.float64)
    v, ref = 0.3 * np.eye(9), []
    for _ in range(25):
        g = [-np.inf if i in ref else np.log1p(s[i] @ np.linalg.solve(v, s[i])) for i in range(len(s))]
        ref.append(int(np.argmax(g)))
        v += np.outer(s[ref[-1]], s[ref[-1]])
    res = get_selector("sentence_od", ridge=0.3).select(f, 25)
    assert res.indices.tolist() == ref
    assert res.gains.sum() == pytest.approx(np.linalg.slogdet(v)[1] - 9 * np.log(0.3), rel=1e-10)


def test_knn_distance_matches_full_matrix():
    e = np.random.default_rng(1).standard_normal((57, 5))
    full = np.linalg.norm(e[:, None] - e[None], axis=-1)
    np.fill_diagonal(full, np.inf)
    ref = np.sort(full, axis=1)[:, :4].mean(1)
    np.testing.assert_allclose(knn_mean_distance(e, 4, chunk=10), ref, rtol=1e-9, atol=1e-9)


def clustered_with_outliers() -> TokenFeatures:
    """40 sentences around one direction, 3 pointing elsewhere (indices 40..42)."""
    rng = np.random.default_rng(2)
    base = np.eye(8)[0]
    sents = [(base + 0.01 * rng.standard_normal(8))[None] for _ in range(40)]
    sents += [np.eye(8)[j][None] for j in (3, 5, 7)]
    return TokenFeatures.from_list(sents)


def test_density_lowest_picks_the_sparse_points():
    res = get_selector("density", k=3, mode="lowest").select(clustered_with_outliers(), 3)
    assert sorted(res.indices.tolist()) == [40, 41, 42]


def test_density_sampling_is_seeded_and_favours_sparse_points():
    f = clustered_with_outliers()
    sel = get_selector("density", k=3)
    a, b = sel.select(f, 5, seed=11), sel.select(f, 5, seed=11)
    assert a.indices.tolist() == b.indices.tolist()
    assert len(set(a.indices.tolist())) == 5
    hits = sum(len({40, 41, 42} & set(sel.select(f, 3, seed=s).indices.tolist())) for s in range(50))
    assert hits > 0.5 * 150  # uniform sampling would average 3/43 of 150, about 10


def test_budget_rules():
    f = pool(6, 4, seed=3)
    for name in ("sentence_od", "density"):
        assert sorted(get_selector(name).select(f, 6).indices.tolist()) == list(range(6))
        with pytest.raises(SelectionError):
            get_selector(name).select(f, 7)
    with pytest.raises(SelectionError, match="mode"):
        get_selector("density", mode="highest")
