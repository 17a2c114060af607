"""SentenceOD (FisherSFT paper's baseline): the same D-optimal greedy, one vector per sentence.

Each sentence is reduced to its mean-pooled embedding s_i, so the gain is rank one,
log(1 + s_i^T V^-1 s_i): the design sees what a sentence is about on average but not how many
distinct directions its tokens span, which is exactly what token-level FisherSFT adds.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionResult, check_budget, finite_or_error
from infosift.select.fishersft import greedy_params, knapsack_greedy


def pooled_features(features: TokenFeatures) -> TokenFeatures:
    """One 'token' per sentence: its mean-pooled embedding (an empty sentence pools to zeros).

    The pooled sentence keeps the original's fine-tune cost, so token budgets price it the same.
    """
    finite_or_error(features)
    pooled = features.mean_pooled().astype(np.float64)
    ones = np.arange(len(features) + 1, dtype=np.int64)
    return TokenFeatures(pooled, ones, list(features.ids), costs=features.token_costs)


@register("sentence_od")
class SentenceOD:
    deterministic = True
    distributable = True  # see FisherSFT

    def __init__(self, ridge: float = 1.0, batch: int = 16, refactor_every: int = 50, device: str | None = None):
        self.ridge, self.batch, self.refactor_every, self.device = ridge, batch, refactor_every, device

    def select(
        self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None, unit: str = "examples"
    ) -> SelectionResult:
        check_budget(features, budget, unit)
        pooled = pooled_features(features)
        idx, g, info = knapsack_greedy(pooled, budget, unit, **greedy_params(self))
        return SelectionResult(indices=idx, gains=g, info=info)
