"""SentenceOD (FisherSFT paper's baseline): the same D-optimal greedy, one vector per sentence.

Each sentence is reduced to its mean-pooled embedding s_i, so the gain is rank one,
log(1 + s_i^T V^-1 s_i): the design sees what a sentence is about on average but not how many
distinct directions its tokens span, which is exactly what token-level FisherSFT adds.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionError, SelectionResult
from infosift.select.fishersft import lazy_greedy


def pooled_features(features: TokenFeatures) -> TokenFeatures:
    """One 'token' per sentence: its mean-pooled embedding (an empty sentence pools to zeros)."""
    try:
        features.check_finite()
    except ValueError as err:
        raise SelectionError(str(err)) from None
    pooled = features.mean_pooled().astype(np.float64)
    return TokenFeatures(pooled, np.arange(len(features) + 1, dtype=np.int64), list(features.ids))


@register("sentence_od")
class SentenceOD:
    def __init__(self, ridge: float = 1.0, batch: int = 16, refactor_every: int = 50, device: str | None = None):
        self.ridge, self.batch, self.refactor_every, self.device = ridge, batch, refactor_every, device

    def select(self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None):
        pooled = pooled_features(features)
        idx, g, info = lazy_greedy(pooled, budget, self.ridge, self.batch, self.refactor_every, self.device)
        return SelectionResult(indices=idx, gains=g, info=info)
