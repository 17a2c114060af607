"""CELF's knapsack rule (Leskovec et al. 2007): run two greedies under the budget, keep the better.

With examples of different cost, the plain-gain greedy can spend the budget on a few long examples and
the cost-benefit greedy (gain / cost) can fill it with many short weak ones; each alone can be arbitrarily
bad, but the better of the two is within a constant factor ((1 - 1/e)/2) of the best set that fits.
With equal costs both runs make the same choices, so only one is run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Run = tuple[np.ndarray, np.ndarray, dict]  # (indices in order chosen, marginal gains, info)


def best_of_two(greedy: Callable[[bool], Run], costs: np.ndarray) -> Run:
    """``greedy(ratio)`` runs one lazy greedy (ratio=True: by gain / cost); return the higher objective.

    The objective of a run is the sum of its exact marginal gains, f(S) - f(empty).
    """
    plain = greedy(False)
    if len(costs) == 0 or int(costs.min()) == int(costs.max()):
        return plain[0], plain[1], {**plain[2], "celf": "uniform costs: one greedy"}
    ratio = greedy(True)
    f_plain, f_ratio = float(np.sum(plain[1])), float(np.sum(ratio[1]))
    pick, name = (ratio, "cost-benefit") if f_ratio > f_plain else (plain, "plain-gain")
    info = {**pick[2], "celf": name, "objective_plain_gain": f_plain, "objective_cost_benefit": f_ratio}
    return pick[0], pick[1], info
