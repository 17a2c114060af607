"""A control that length cannot fool: random examples drawn from the same length bins as a selector's picks.

A selector that wins by picking short (or long) examples wins by length, not by content: under a token
budget short examples buy more optimizer steps, and a long response teaches more format. The
length-matched control of selector S at budget B and seed s runs S, counts its picks per length bin, and
draws as many examples from each bin uniformly at random (seeded, from the whole pool: S's own picks
may be drawn too). S is then compared with random *and* with its control; only the second difference
can be credited to what S sees beyond length.

Length bins: ``bins`` quantile bins of the pool's fine-tune costs (``TokenFeatures.token_costs``, prompt +
response tokens under the chat template): edges at the 1/bins, 2/bins, ... quantiles; an example whose
cost equals an edge goes to the upper bin (many equal costs can leave a bin empty). Under an example
budget the control has exactly S's count in every bin. Under a token budget the matched draws come first
and the rest of the pool follows in seeded random order, the whole order filled (base.fill): the budget
invariants hold, and the bin counts match up to the examples that the within-bin spread of costs makes
fit or not.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import get_selector, register
from infosift.select.base import SelectionError, SelectionResult, budget_info, check_budget, fill

STREAM = 0x4C4D  # the control's draws use their own stream: the seed-s control is not random's seed-s draw


def length_bins(costs: np.ndarray, bins: int) -> np.ndarray:
    """(N,) bin of each example: quantile bins of ``costs``, an example on an edge in the upper bin."""
    c = np.asarray(costs, dtype=np.float64)
    edges = np.quantile(c, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.searchsorted(edges, c, side="right").astype(np.int64)


def matched_draw(bin_of: np.ndarray, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random examples with the same count per bin as ``picks`` (without replacement), in random order."""
    counts = np.bincount(bin_of[np.asarray(picks, dtype=np.int64)], minlength=int(bin_of.max()) + 1)
    drawn = [rng.permutation(np.flatnonzero(bin_of == b))[:c] for b, c in enumerate(counts.tolist()) if c]
    return rng.permutation(np.concatenate(drawn)) if drawn else np.zeros(0, dtype=np.int64)


def check_inner(of: object) -> dict:
    """The matched selector's configuration: {selector: name, **its params}; None = random."""
    if of is None:
        return {"selector": "random"}
    if not isinstance(of, dict) or not isinstance(of.get("selector"), str):
        raise SelectionError(f"length_matched 'of' must be a mapping with a 'selector' name, got {of!r}")
    for key in ("query", "filter", "of"):
        if key in of:
            raise SelectionError(f"length_matched 'of' cannot hold {key!r}: set it on the variant itself")
    return dict(of)


@register("length_matched")
class LengthMatched:
    deterministic = False  # the draws are seeded: one control per seed

    def __init__(self, of: dict | None = None, bins: int = 4):
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise SelectionError(f"length_matched bins must be a whole number >= 1, got {bins!r}")
        cfg = check_inner(of)
        self.of, self.bins = cfg, bins
        self.inner = get_selector(cfg.pop("selector"), **cfg)

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
        picks = np.asarray(self.inner.select(features, budget, seed, targets, scores, unit).indices, dtype=np.int64)
        bin_of = length_bins(features.token_costs, self.bins)
        rng = np.random.default_rng([seed, STREAM])
        matched = matched_draw(bin_of, picks, rng)
        rest = rng.permutation(np.setdiff1d(np.arange(len(features)), matched))
        idx = fill(np.concatenate([matched, rest]), costs, budget)
        info = {
            **budget_info(costs, idx, budget, unit),
            "matched": getattr(self.inner, "name", type(self.inner).__name__),
            "bins": self.bins,
        }
        return SelectionResult(indices=idx, gains=None, info=info)
