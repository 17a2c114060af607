"""A quality filter in front of any selector: drop the worst share of the pool, select from the rest.

Loss- or uncertainty-seeking selectors pick noisy examples (noisy points carry high irreducible loss:
RHO-LOSS, arXiv 2206.07137); filters that test whether a response fits its prompt remove them first
(IFD, arXiv 2308.12032; Superfiltering, arXiv 2402.00530, scores with a small model). ``Filtered`` wraps a
selector: the ``drop`` share of the pool with the lowest quality score (higher is better, e.g. ``pmi`` or
``eos`` from infosift/quality.py) is removed, the selector runs on the kept examples, and its indices are
mapped back to the whole pool. Dropped: the floor(drop * N) lowest scores, ties to the lower index. The kept
examples are a view of the pool (TokenFeatures.view), read as the selector needs them, never a second copy.

Budgets hold on the kept pool: a token budget is filled from the kept examples, and a budget larger than
what the filter keeps is a SelectionError, as it would be for a smaller pool.
"""

from __future__ import annotations

import math

import numpy as np

from infosift.features import TokenFeatures
from infosift.select.base import SelectionError, SelectionResult, Selector


def check_drop(drop: object) -> float:
    """The share to drop, a finite number in [0, 1)."""
    if isinstance(drop, bool) or not isinstance(drop, int | float) or not math.isfinite(drop):
        raise SelectionError(f"filter drop must be a number in [0, 1), got {drop!r}")
    if not 0.0 <= drop < 1.0:
        raise SelectionError(f"filter drop must be in [0, 1) (1 drops the whole pool), got {drop!r}")
    return float(drop)


def kept_indices(quality: np.ndarray, drop: float) -> np.ndarray:
    """Sorted indices of the examples that survive dropping the floor(drop * N) lowest scores."""
    q = np.asarray(quality, dtype=np.float64)
    n_drop = int(math.floor(check_drop(drop) * len(q) + 1e-9))
    if n_drop >= len(q):
        raise SelectionError(f"filter drop {drop} removes the whole pool ({len(q)} examples)")
    worst_first = np.lexsort((np.arange(len(q)), q))
    return np.sort(worst_first[n_drop:]).astype(np.int64)


class Filtered:
    """``selector`` run on the examples whose ``quality`` survives the filter; indices are the whole pool's."""

    def __init__(self, selector: Selector, quality: np.ndarray, drop: float, score: str = "quality"):
        self.selector, self.score, self.drop = selector, score, check_drop(drop)
        self.quality = np.asarray(quality, dtype=np.float64)
        if self.quality.ndim != 1 or not np.isfinite(self.quality).all():
            bad = int(np.argmin(np.isfinite(self.quality))) if self.quality.ndim == 1 else None
            raise SelectionError(f"filter score {score!r} must be finite numbers, one per example (example {bad})")
        self.name = getattr(selector, "name", type(selector).__name__)
        self.deterministic = bool(getattr(selector, "deterministic", False))

    def select(
        self,
        features: TokenFeatures,
        budget: int,
        seed: int = 0,
        targets: TokenFeatures | None = None,
        scores: np.ndarray | None = None,
        unit: str = "examples",
    ) -> SelectionResult:
        if len(self.quality) != len(features):
            raise SelectionError(
                f"filter score {self.score!r} has {len(self.quality)} values for a pool of {len(features)} examples"
            )
        keep = kept_indices(self.quality, self.drop)
        sub_scores = None if scores is None else np.asarray(scores)[keep]  # per-example query scores follow
        res = self.selector.select(
            features.view(keep), budget, seed=seed, targets=targets, scores=sub_scores, unit=unit
        )
        info = {
            **res.info,
            "filter_score": self.score,
            "filter_drop": self.drop,
            "filter_kept": int(len(keep)),
            "filter_threshold": float(self.quality[keep].min()),
        }
        return SelectionResult(indices=keep[np.asarray(res.indices, dtype=np.int64)], gains=res.gains, info=info)
