"""Seeded uniform sampling: the baseline every other selector must beat."""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionResult, check_budget


@register("random")
class RandomSelector:
    def select(self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None):
        check_budget(features, budget)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(features), size=budget, replace=False).astype(np.int64)
        return SelectionResult(indices=idx, gains=None)
