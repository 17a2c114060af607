"""typicality (TypiClust) against brute-force k-means and brute-force typicality; length against a plain sort."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from infosift.features import TokenFeatures
from infosift.select import SelectionError, get_selector
from infosift.select.base import fill
from infosift.select.density import normalized_embeddings
from tests.test_budgets import assert_filled, pool

# -- typicality ---------------------------------------------------------------------------------------------


def brute_kmeans(e: np.ndarray, k: int) -> np.ndarray:
    """The labels of the partition into k non-empty clusters with the least within-cluster squared error."""
    best, best_sse = None, np.inf
    for labels in itertools.product(range(k), repeat=len(e)):
        lab = np.asarray(labels)
        if lab[0] != 0 or len(set(labels)) != k:  # one labelling per partition: the first point in cluster 0
            continue
        sse = sum(((e[lab == c] - e[lab == c].mean(0)) ** 2).sum() for c in range(k))
        if sse < best_sse - 1e-12:
            best, best_sse = lab, sse
    return best


def brute_typical_order(e: np.ndarray, labels: np.ndarray, k_nn: int) -> list[int]:
    """Round by round, the r-th most typical of each cluster, larger clusters first (ties: lower index)."""
    clusters = [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]
    ranked = []
    for members in clusters:
        k = min(k_nn, len(members) // 2)
        typ = {}
        for i in members:
            d = sorted(float(np.linalg.norm(e[i] - e[j])) for j in members if j != i)
            typ[i] = 1.0 / (1e-5 + np.mean(d[:k])) if k >= 1 else 1e5
        ranked.append(sorted(members, key=lambda i: (-typ[i], i)))
    order = []
    for r in range(max(len(m) for m in ranked)):
        row = [(len(m), m[r]) for m in ranked if r < len(m)]
        order += [i for _, i in sorted(row, key=lambda t: (-t[0], t[1]))]
    return order


def partition(labels: np.ndarray) -> set[frozenset]:
    return {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}


@pytest.mark.parametrize("seed,n,k", [(0, 9, 3), (1, 8, 2), (2, 9, 3), (3, 10, 2), (4, 8, 3)])
def test_typicality_picks_the_densest_example_of_each_brute_force_cluster(seed, n, k):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, 3)) * 3
    sentences = [centers[i % k] + 0.4 * rng.standard_normal((int(rng.integers(1, 4)), 3)) for i in range(n)]
    f = TokenFeatures.from_list(sentences)
    f.costs = rng.integers(3, 20, n)
    e = normalized_embeddings(f)
    labels = brute_kmeans(e, k)
    order = brute_typical_order(e, labels, k_nn=20)
    sel = get_selector("typicality", n_init=10)
    res = sel.select(f, k, seed=seed)
    assert res.indices.tolist() == order[:k]  # one per cluster: its most typical, the largest cluster first
    assert len({int(labels[i]) for i in res.indices}) == k
    assert res.info["clusters"] == k
    budget = int(round(k * f.costs.mean()))  # buys k examples at the mean cost: k clusters again
    tok = sel.select(f, budget, seed=seed, unit="tokens")
    assert tok.info["clusters"] == k
    assert tok.indices.tolist() == fill(np.asarray(order), f.costs, budget).tolist()  # the same order, filled
    assert_filled(tok.indices, f.costs, budget)


def test_typicality_is_seeded_and_checks_its_params():
    f = pool(60, 6, seed=5)
    sel = get_selector("typicality", n_init=1)
    picks = {s: sel.select(f, 12, seed=s).indices.tolist() for s in range(4)}
    assert all(sel.select(f, 12, seed=s).indices.tolist() == picks[s] for s in range(4))
    assert len({tuple(sorted(p)) for p in picks.values()}) > 1  # k-means++ starts differ with the seed
    assert sorted(sel.select(f, 60).indices.tolist()) == list(range(60))  # k = N: every example its own cluster
    for bad in ({"k_nn": 0}, {"n_init": 0}, {"k_nn": 2.5}):
        with pytest.raises(SelectionError, match="typicality"):
            get_selector("typicality", **bad)
    nan = pool(10, 3, seed=6)
    nan.values[0, 0] = np.nan
    with pytest.raises(SelectionError, match="NaN"):
        get_selector("typicality").select(nan, 3)


# -- length -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_length_takes_the_longest_responses_first(seed):
    f = pool(40, 4, seed)
    lengths, costs = f.lengths, f.token_costs
    by_hand = sorted(range(40), key=lambda i: (-lengths[i], i))
    assert get_selector("length").select(f, 11).indices.tolist() == by_hand[:11]
    budget = int(costs.sum()) // 4
    chosen, left = [], budget
    for i in by_hand:
        if costs[i] <= left:
            chosen.append(i)
            left -= int(costs[i])
    assert get_selector("length").select(f, budget, unit="tokens").indices.tolist() == chosen
    top = get_selector("length").select(f, 11).indices
    assert lengths[top].min() >= np.delete(lengths, top).max()
