"""The length-matched random control: the selector's count in every length bin, drawn at random, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from infosift.select import SelectionError, available, get_selector
from infosift.select.length_matched import length_bins
from tests.test_budgets import assert_filled, pool, query_inputs


def test_length_bins_are_cost_quantiles_by_hand():
    costs = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 10])
    np.testing.assert_array_equal(length_bins(costs, 2), (costs > 5.5).astype(int))  # median 5.5
    quart = length_bins(costs, 4)
    edges = np.quantile(costs, [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(quart, [(c >= edges).sum() for c in costs])
    assert np.bincount(quart).tolist() == [3, 2, 2, 3]
    assert length_bins(np.array([4, 4, 4, 9]), 4).tolist() == [2, 2, 2, 3]  # edges 4, 4, 5.25: on an edge goes up
    assert length_bins(costs, 1).tolist() == [0] * 10


MATCHED = [n for n in available() if n != "length_matched"]


@pytest.mark.parametrize("name", MATCHED)
@pytest.mark.parametrize("bins", [2, 4, 5])
def test_example_budget_matches_the_selectors_bin_counts(name, bins):
    f = pool(60, 5, seed=11)
    inputs = query_inputs(name, f, 4)
    bin_of = length_bins(f.token_costs, bins)
    inner = get_selector(name).select(f, 15, seed=3, **inputs).indices
    control = get_selector("length_matched", of={"selector": name}, bins=bins)
    res = control.select(f, 15, seed=3, **inputs)
    assert len(set(res.indices.tolist())) == 15
    np.testing.assert_array_equal(
        np.bincount(bin_of[res.indices], minlength=bins), np.bincount(bin_of[inner], minlength=bins)
    )
    assert res.info["matched"] == name and res.info["bins"] == bins
    np.testing.assert_array_equal(control.select(f, 15, seed=3, **inputs).indices, res.indices)  # seeded


def test_control_of_longest_first_draws_only_long_examples_but_other_ones():
    f = pool(80, 4, seed=12)
    f.costs = 10 + 3 * f.lengths  # cost grows with the response: the longest are the dearest
    bin_of = length_bins(f.token_costs, 4)
    picks = get_selector("length").select(f, 12).indices
    assert set(bin_of[picks].tolist()) == {3}
    draws = [get_selector("length_matched", of={"selector": "length"}).select(f, 12, seed=s).indices for s in range(4)]
    assert all(set(bin_of[d].tolist()) == {3} for d in draws)
    assert len({tuple(sorted(d.tolist())) for d in draws}) == 4  # a new draw per seed
    assert any(set(d.tolist()) != set(picks.tolist()) for d in draws)  # random within the bin, not the picks
    unmatched = get_selector("random").select(f, 12, seed=0).indices
    assert set(bin_of[unmatched].tolist()) != {3}  # plain random spreads over the bins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_budget_keeps_the_invariants_and_follows_the_bins(seed):
    f = pool(80, 4, seed=seed)
    f.costs = 10 + 3 * f.lengths
    bin_of = length_bins(f.token_costs, 4)
    budget = int(f.token_costs.sum()) // 5
    res = get_selector("length_matched", of={"selector": "length"}).select(f, budget, seed=seed, unit="tokens")
    assert_filled(res.indices, f.token_costs, budget)
    rand = get_selector("random").select(f, budget, seed=seed, unit="tokens")
    assert np.mean(bin_of[res.indices] == 3) > np.mean(bin_of[rand.indices] == 3)


def test_bad_control_configs_are_selection_errors():
    for of, match in (
        ("fishersft", "must be a mapping"),
        ({"ridge": 1.0}, "must be a mapping with a 'selector'"),
        ({"selector": "gip", "query": "targets"}, "cannot hold 'query'"),
        ({"selector": "nope"}, "unknown selector 'nope'"),
    ):
        with pytest.raises(SelectionError, match=match):
            get_selector("length_matched", of=of)
    with pytest.raises(SelectionError, match="bins must be a whole number >= 1"):
        get_selector("length_matched", bins=0)
