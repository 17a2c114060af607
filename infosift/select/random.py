"""Seeded uniform sampling: the baseline every other selector must beat.

A token budget is filled in seeded random order (examples that no longer fit are passed over), so
random pays the same tokens as the selectors it is compared with.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionResult, budget_info, check_budget, fill


@register("random")
class RandomSelector:
    deterministic = False  # its picks depend on the seed: the pipeline selects once per seed

    def select(
        self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None, unit: str = "examples"
    ) -> SelectionResult:
        costs = check_budget(features, budget, unit)
        idx = fill(np.random.default_rng(seed).permutation(len(features)), costs, budget)
        return SelectionResult(indices=idx, gains=None, info=budget_info(costs, idx, budget, unit))
