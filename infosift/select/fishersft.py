"""FisherSFT: greedy D-optimal design over sentences, each sentence the sum of its tokens' outer products.

Objective: f(S) = log det(V_S), V_S = ridge * I + sum_{i in S} X_i^T X_i  (X_i: (M_i, d) token embeddings).
Gain of sentence i: g_i = log det(I + X_i V^-1 X_i^T). f is monotone submodular, so a gain computed
earlier is an upper bound on today's gain: lazy greedy keeps those stale gains in a max-heap, recomputes
only the top few (together, as one batch), and accepts a sentence as soon as its fresh gain is at the
top of the heap. Ties break on the lowest index, so the order equals the plain exact greedy's.
"""

from __future__ import annotations

import heapq
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionError, SelectionResult, check_budget
from infosift.select.incremental import GreedyState, to_numpy
from infosift.select.logdet import gains, padded


def default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def length_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Split all sentences into length-sorted batches of at most max_tokens padded rows each."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * max(int(lengths[order[stop]]), 1) <= max_tokens:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def first_gains(features: TokenFeatures, ridge: float, device: str, max_tokens: int = 32768) -> np.ndarray:
    """All gains against V = ridge * I in one batched, bounded-memory pass (the floor of any greedy)."""
    out = np.empty(len(features), dtype=np.float64)
    for idx in length_batches(features.lengths, max_tokens):
        out[idx] = to_numpy(gains(padded(features, idx, device), None, ridge))
    return out


def lazy_greedy(
    features: TokenFeatures,
    budget: int,
    ridge: float = 1.0,
    batch: int = 16,
    refactor_every: int = 50,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact greedy maximisation of log det(ridge*I + sum X_i^T X_i); returns (indices, gains, info)."""
    if ridge <= 0:
        raise SelectionError(f"ridge must be > 0 (log det of a singular start is -inf), got {ridge}")
    check_budget(features, budget)
    try:
        features.check_finite()
    except ValueError as err:
        raise SelectionError(str(err)) from None
    device = default_device(device)
    # One BLAS thread on CPU: the greedy's many small float64 products only wait on a thread pool, and a
    # pool that shares its cores with other work (DVC stages, a second job) stalls even the big first pass.
    with threadpool_limits(limits=1 if device == "cpu" else None):
        t0 = time.perf_counter()
        g0 = first_gains(features, ridge, device)
        t_first = time.perf_counter() - t0
        heap = [(-g, i) for i, g in enumerate(g0.tolist())]  # max-heap of (stale gain, index)
        heapq.heapify(heap)
        fresh_at = np.zeros(len(features), dtype=np.int64)  # step at which each heap gain was computed
        state = GreedyState(features, ridge, device, refactor_every)
        chosen, chosen_gains = [], []
        for step in range(budget):
            while fresh_at[heap[0][1]] != step:  # top is stale: recompute it and the next few stale ones
                idx = []
                while heap and len(idx) < batch and fresh_at[heap[0][1]] != step:
                    idx.append(heapq.heappop(heap)[1])
                idx = np.asarray(idx)
                fresh_at[idx] = step
                for g, i in zip(state.gains(idx).tolist(), idx.tolist(), strict=True):
                    heapq.heappush(heap, (-g, i))
            _, best = heapq.heappop(heap)
            chosen.append(best)
            chosen_gains.append(state.add(best))
    info = {
        "n_gain_evals": state.n_full + state.n_incremental,
        "n_incremental": state.n_incremental,
        "first_pass_s": t_first,
        "total_s": time.perf_counter() - t0,
        "device": device,
        "logdet_final": state.logdet(),
    }
    return np.asarray(chosen, dtype=np.int64), np.asarray(chosen_gains), info


@register("fishersft")
class FisherSFT:
    """Greedy D-optimal sentence selection on token embeddings (budget = N returns all, in greedy order)."""

    def __init__(
        self,
        ridge: float = 1.0,
        batch: int = 16,
        refactor_every: int = 50,
        device: str | None = None,
    ) -> None:
        self.ridge, self.batch, self.refactor_every, self.device = ridge, batch, refactor_every, device

    def select(self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None):
        idx, g, info = lazy_greedy(features, budget, self.ridge, self.batch, self.refactor_every, self.device)
        return SelectionResult(indices=idx, gains=g, info=info)
