"""DSIR as a selector: rank the pool by its log importance weights (infosift/queries/dsir_weights.py), then fill
the budget.

``mode="topk"`` takes the highest log weights first (ties: lowest index). ``mode="sample"`` is DSIR's own
resampling, without replacement and with probability proportional to w(x), done as Gumbel top-k on
log w(x) with a seeded Generator. The weights come in as ``scores``; the selector never reads feature
values (only the costs a token budget needs), so it works from text alone.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionError, SelectionResult, budget_info, check_budget, fill

MODES = ("topk", "sample")


def check_scores(scores: np.ndarray | None, n: int) -> np.ndarray:
    """The (N,) finite float64 log weights, or a SelectionError saying what is wrong with them."""
    if scores is None:
        raise SelectionError("dsir needs scores: the (N,) DSIR log importance weights of the pool")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise SelectionError(f"dsir scores must have shape ({n},), got {s.shape}")
    if not np.isfinite(s).all():
        raise SelectionError(f"dsir scores must be finite (example {int(np.argmin(np.isfinite(s)))} is not)")
    return s


@register("dsir")
class DSIR:
    def __init__(self, mode: str = "topk"):
        if mode not in MODES:
            raise SelectionError(f"dsir mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode

    def select(
        self,
        features: TokenFeatures,
        budget: int,
        seed: int = 0,
        targets: TokenFeatures | None = None,
        scores: np.ndarray | None = None,
        unit: str = "examples",
    ) -> SelectionResult:
        costs = check_budget(features, budget, unit)
        log_w = check_scores(scores, len(features))
        if self.mode == "topk":
            order = np.lexsort((np.arange(len(log_w)), -log_w))
        else:  # Gumbel top-k == sequential sampling without replacement, p_i proportional to exp(log_w_i)
            keys = log_w + np.random.default_rng(seed).gumbel(size=len(log_w))
            order = np.argsort(-keys, kind="stable")
        indices = fill(order, costs, budget)
        return SelectionResult(
            indices, gains=None, info=budget_info(costs, indices, budget, unit) | {"mode": self.mode}
        )
