"""Stochastic greedy (Mirzasoleiman et al. 2015, "Lazier than lazy greedy") on FisherSFT's log det objective.

The exact greedy takes, each step, the best gain in the whole pool. The stochastic greedy takes the best
exact gain in a random sample R of the unchosen candidates, drawn afresh each step, of size

    s = ceil((n / k) * log(1 / epsilon))      (n: the pool, k: the number of picks; at most n)

For a monotone submodular f under |S| <= k this gives E[f(S)] >= (1 - 1/e - epsilon) f(OPT) (their
Theorem 1): R holds an element of OPT \\ S often enough that each step expects at least
(1 - epsilon) / k of what is still missing. All k steps look at k * s = n log(1 / epsilon) candidates,
whatever k is, instead of the exact greedy's up to n per step.

Laziness inside the sample. Every gain ever computed stays as a stale upper bound (f is submodular: a
gain only shrinks as V grows; the first pass, against V = ridge * I, bounds them all and is exact at step
0). R is visited from the highest stale key down (key: gain, or gain / cost for CELF's ratio run) and
recomputed exactly in batches; as soon as the best fresh key found beats the next stale one, no later
candidate of R can win and the rest of R keeps its stale bound. So each step's pick is exactly the best in
R (ties: the lowest index), the guarantee is untouched, and laziness only saves gain evaluations. With
s >= n, R is the whole pool and the run is the exact greedy.

Budgets. Under a token budget, k is the expected number of picks, budget / mean cost (at least 1);
candidates that no longer fit are dropped for good (what is left only shrinks), R is drawn from those
that still fit, and the run stops when none does. CELF (celf.py) runs it by gain and by gain / cost; the
(1 - 1/e - epsilon) bound is proved for an example budget, under the knapsack it carries over only as
CELF's heuristic does.
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np
from threadpoolctl import threadpool_limits

from infosift.device import pick_device
from infosift.features import TokenFeatures
from infosift.select.base import SelectionError
from infosift.select.incremental import GreedyState
from infosift.select.logdet import first_gains


def check_epsilon(epsilon: object) -> float | None:
    """None (the exact greedy) or a number strictly between 0 and 1."""
    if epsilon is None:
        return None
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0.0 < float(epsilon) < 1.0:
        raise SelectionError(f"fishersft epsilon must be None (exact greedy) or a number in (0, 1), got {epsilon!r}")
    return float(epsilon)


def sample_size(costs: np.ndarray, budget: int, epsilon: float) -> int:
    """s = ceil((n / k) log(1 / epsilon)) with k = budget / mean cost >= 1 the expected picks; 1 <= s <= n."""
    n = len(costs)
    k = max(1.0, budget / float(np.mean(costs)))
    return min(n, max(1, math.ceil(n / k * math.log(1.0 / epsilon))))


def best_in_sample(
    state: GreedyState, sample: np.ndarray, bound: np.ndarray, fresh_at: np.ndarray, price: np.ndarray, batch: int
) -> int:
    """The candidate of ``sample`` with the highest exact key bound / price (lowest index on ties).

    ``bound`` holds each candidate's last computed gain, an upper bound on its gain now; those computed at
    this step (``fresh_at``) are exact. Stale ones are recomputed, highest key first, ``batch`` at a time,
    only while their stale key could still beat the best fresh one; ``bound`` and ``fresh_at`` are updated.
    """
    step = state.step
    fresh = sample[fresh_at[sample] == step]
    best_key, best = -np.inf, -1
    if len(fresh):
        keys = bound[fresh] / price[fresh]
        best = int(fresh[np.lexsort((fresh, -keys))[0]])
        best_key = float(bound[best] / price[best])
    stale = sample[fresh_at[sample] != step]
    stale_keys = bound[stale] / price[stale]
    order = np.lexsort((stale, -stale_keys))  # highest stale key first, lowest index on ties
    stale, stale_keys = stale[order].tolist(), stale_keys[order].tolist()
    start = 0
    while start < len(stale):
        stop = start
        while stop < len(stale) and stop - start < batch and (stale_keys[stop], -stale[stop]) > (best_key, -best):
            stop += 1
        if stop == start:  # sorted: if this one cannot win, none after it can
            break
        idx = np.asarray(stale[start:stop], dtype=np.int64)
        bound[idx] = state.gains(idx)
        fresh_at[idx] = step
        for i, key in zip(idx.tolist(), (bound[idx] / price[idx]).tolist(), strict=True):
            if (key, -i) > (best_key, -best):
                best_key, best = key, i
        start = stop
    return best


def stochastic_greedy(
    features: TokenFeatures,
    costs: np.ndarray,
    budget: int,
    ratio: bool = False,
    ridge: float = 1.0,
    batch: int = 16,
    refactor_every: int = 50,
    device: str | None = None,
    *,
    epsilon: float,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Stochastic greedy on log det(ridge*I + sum X_i^T X_i) subject to sum c_i <= budget (see the module).

    The same arguments and returns as fishersft.lazy_greedy, plus ``epsilon`` (sample size) and ``seed``
    (the samples' random stream).
    """
    if ridge <= 0:
        raise SelectionError(f"ridge must be > 0 (log det of a singular start is -inf), got {ridge}")
    epsilon = check_epsilon(epsilon)
    device = pick_device(device)
    price = costs.astype(np.float64) if ratio else np.ones(len(costs))
    s = sample_size(costs, budget, epsilon)
    rng = np.random.default_rng(seed)
    with threadpool_limits(limits=1 if device == "cpu" else None):  # why: see fishersft.lazy_greedy
        t0 = time.perf_counter()
        bound = first_gains(features, ridge, device)
        t_first = time.perf_counter() - t0
        fresh_at = np.zeros(len(features), dtype=np.int64)  # the first pass is exact at step 0
        state = GreedyState(features, ridge, device, refactor_every)
        chosen, chosen_gains, left = [], [], int(budget)
        alive = np.flatnonzero(costs <= left)  # unchosen and still fits
        while len(alive):
            sample = rng.choice(alive, size=min(s, len(alive)), replace=False)
            best = best_in_sample(state, sample, bound, fresh_at, price, batch)
            chosen.append(best)
            chosen_gains.append(state.add(best))
            left -= int(costs[best])
            alive = alive[(alive != best) & (costs[alive] <= left)]
    info = {**state.summary(), "first_pass_s": t_first, "total_s": time.perf_counter() - t0, "device": device}
    info.update(epsilon=epsilon, sample_size=s, seed=int(seed))
    return np.asarray(chosen, dtype=np.int64), np.asarray(chosen_gains), info
