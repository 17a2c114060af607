"""The one protocol every selector follows (scikit-learn style: parameters at construction, one verb).

Budgets come in two units. ``unit="examples"`` counts examples; ``unit="tokens"`` counts what a
fine-tune pays for, the prompt + response tokens of each example under the chat template
(``TokenFeatures.token_costs``). A token budget is *filled*: a selector stops only when no unchosen
example still fits in what is left, so two selectors at the same budget train on (nearly) the same
number of tokens and a log-det greedy cannot win by preferring long examples.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from infosift.errors import SelectionError
from infosift.features import TokenFeatures

__all__ = ["SelectionError", "SelectionResult", "Selector", "UNITS", "budget_info", "check_budget", "fill"]

UNITS = ("examples", "tokens")


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
        unit: str = "examples",
    ) -> SelectionResult: ...


def unit_costs(features: TokenFeatures, unit: str) -> np.ndarray:
    """(N,) int64 price of each example in budget units: 1 per example, or its fine-tune tokens."""
    if unit not in UNITS:
        raise SelectionError(f"budget unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if unit == "examples":
        return np.ones(len(features), dtype=np.int64)
    return features.token_costs


def check_budget(features: TokenFeatures, budget: int, unit: str = "examples") -> np.ndarray:
    """Validate ``budget`` against the pool and return the per-example costs in its unit.

    A budget must buy at least one example and at most the whole pool: asking for more than the pool
    holds is an error, never a silent 'all'.
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise SelectionError(f"budget must be a whole number of {unit}, got {budget!r}")
    budget = int(budget)
    costs = unit_costs(features, unit)
    n = len(features)
    if n == 0:
        raise SelectionError("the pool is empty: nothing to select from")
    if unit == "examples":
        if budget < 1:
            raise SelectionError(f"budget must be >= 1, got {budget}")
        if budget > n:
            raise SelectionError(f"budget {budget} is larger than the pool ({n} examples)")
        return costs
    if budget < int(costs.min()):
        raise SelectionError(f"token budget {budget} fits no example (the shortest costs {int(costs.min())} tokens)")
    if budget > int(costs.sum()):
        raise SelectionError(f"token budget {budget} exceeds the whole pool ({int(costs.sum())} tokens)")
    return costs


def fill(order: np.ndarray, costs: np.ndarray, budget: int) -> np.ndarray:
    """Take examples in ``order`` while they fit, skipping those that do not; stop when none can.

    The budget is filled: an example too long for what is left is passed over, and a later shorter one
    may still be taken. Selectors that only rank (random, density, dsir) end in this one call.
    """
    order = np.asarray(order, dtype=np.int64)
    left, floor, chosen = int(budget), int(costs.min()), []
    for i in order.tolist():
        if left < floor:
            break
        c = int(costs[i])
        if c <= left:
            chosen.append(i)
            left -= c
    return np.asarray(chosen, dtype=np.int64)


def budget_info(costs: np.ndarray, indices: np.ndarray, budget: int, unit: str) -> dict:
    """What a selection spent, for its manifest: examples, units used and the budget."""
    used = int(costs[np.asarray(indices, dtype=np.int64)].sum()) if len(indices) else 0
    return {"unit": unit, "budget": int(budget), "used": used, "n_chosen": int(len(indices))}


def finite_or_error(features: TokenFeatures) -> None:
    """check_finite as a SelectionError: the one wrapper every value-reading selector uses."""
    try:
        features.check_finite()
    except ValueError as err:
        raise SelectionError(str(err)) from None
