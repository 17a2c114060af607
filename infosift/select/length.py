"""Longest responses first: the simple baseline of "Long Is More for Alignment" (Zhao et al. 2024, arXiv 2402.04833).

That paper fine-tunes on the 1,000 examples with the longest responses and finds it hard to beat. Here the
response length of example i is its number of feature rows, ``TokenFeatures.lengths`` (under the default
``embed.part: response`` one row per response token, end-of-turn marker included). The order is longest
first, ties on the lowest index; a token budget is filled in that order (base.fill), so under a token
budget the longest examples come first until no unchosen one fits what is left.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionResult, budget_info, check_budget, fill


def longest_first(lengths: np.ndarray) -> np.ndarray:
    """Indices by decreasing length, ties broken by the lowest index."""
    lengths = np.asarray(lengths)
    return np.lexsort((np.arange(len(lengths)), -lengths)).astype(np.int64)


@register("length")
class LongestResponses:
    deterministic = True  # no randomness: one selection serves every seed

    def select(
        self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None, unit: str = "examples"
    ) -> SelectionResult:
        costs = check_budget(features, budget, unit)
        idx = fill(longest_first(features.lengths), costs, budget)
        return SelectionResult(indices=idx, gains=None, info=budget_info(costs, idx, budget, unit))
