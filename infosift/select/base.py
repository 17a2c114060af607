"""The one protocol every selector follows (scikit-learn style: parameters at construction, one verb)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from infosift.features import TokenFeatures


class SelectionError(ValueError):
    """A selection request that cannot be honoured (budget above pool size, bad features...)."""


@dataclass
class SelectionResult:
    """indices in the order chosen; gains = marginal objective gains in that order (or None)."""

    indices: np.ndarray
    gains: np.ndarray | None = None
    info: dict = field(default_factory=dict)


class Selector(Protocol):
    name: str

    def select(
        self,
        features: TokenFeatures,
        budget: int,
        seed: int = 0,
        targets: TokenFeatures | None = None,
        scores: np.ndarray | None = None,
    ) -> SelectionResult: ...


def check_budget(features: TokenFeatures, budget: int) -> None:
    """Budgets must be 1..N: asking for more than the pool holds is an error, never a silent 'all'."""
    n = len(features)
    if budget < 1:
        raise SelectionError(f"budget must be >= 1, got {budget}")
    if budget > n:
        raise SelectionError(f"budget {budget} is larger than the pool ({n} examples)")
