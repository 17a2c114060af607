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

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionError, SelectionResult, check_budget
from infosift.select.logdet import gains, inverse_spd, padded, woodbury


def default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def to_numpy(a) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def eye(d: int, device: str):
    """float64 identity: numpy on CPU, torch elsewhere (see logdet.py for why)."""
    return np.eye(d) if device == "cpu" else torch.eye(d, dtype=torch.float64, device=device)


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
    t0 = time.perf_counter()
    g0 = first_gains(features, ridge, device)
    t_first = time.perf_counter() - t0
    heap = [(-g, i) for i, g in enumerate(g0.tolist())]  # max-heap of (stale gain, index)
    heapq.heapify(heap)
    fresh_at = np.full(len(features), -1)  # step at which each heap gain was computed (-1: first pass)
    d = features.dim
    v = ridge * eye(d, device)  # running sum V, for the refactorization
    vinv = eye(d, device) / ridge
    chosen, chosen_gains, n_evals = [], [], 0
    for step in range(budget):
        if step == 0:
            fresh_at[:] = 0  # the first pass is exact against V = ridge * I
        while fresh_at[heap[0][1]] != step:  # top is stale: recompute it and the next few stale ones
            idx = []
            while heap and len(idx) < batch and fresh_at[heap[0][1]] != step:
                idx.append(heapq.heappop(heap)[1])
            idx = np.asarray(idx)
            fresh = to_numpy(gains(padded(features, idx, device), vinv, ridge))
            n_evals += len(idx)
            fresh_at[idx] = step
            for g, i in zip(fresh.tolist(), idx.tolist(), strict=True):
                heapq.heappush(heap, (-g, i))
        _, best = heapq.heappop(heap)
        x = padded(features, np.asarray([best]), device)[0]
        vinv, gain = woodbury(vinv, x)
        v += x.T @ x
        if (step + 1) % refactor_every == 0:
            vinv = inverse_spd(v)
        chosen.append(best)
        chosen_gains.append(gain)
    info = {
        "n_gain_evals": int(n_evals),
        "first_pass_s": t_first,
        "total_s": time.perf_counter() - t0,
        "device": device,
        "logdet_final": float(np.linalg.slogdet(to_numpy(v))[1]),
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
