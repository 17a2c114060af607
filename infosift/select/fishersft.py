"""FisherSFT: greedy D-optimal design over sentences, each sentence the sum of its tokens' outer products.

Objective: f(S) = log det(V_S), V_S = ridge * I + sum_{i in S} X_i^T X_i  (X_i: (M_i, d) token embeddings).
Gain of sentence i: g_i = log det(I + X_i V^-1 X_i^T). f is monotone submodular, so a gain computed
earlier is an upper bound on today's gain: lazy greedy keeps those stale gains in a max-heap, recomputes
only the top few (together, as one batch), and accepts a sentence as soon as its fresh gain is at the
top of the heap. Ties break on the lowest index, so the order equals the plain exact greedy's.

Budgets. Under a token budget each sentence costs its fine-tune tokens c_i, and the set must fit
sum c_i <= B: a knapsack. CELF (select/celf.py) runs the greedy twice, by gain and by gain / c_i (a
stale ratio is still an upper bound, so both stay lazy), each passing over sentences that no longer
fit, and keeps the higher log det. An example budget is the special case c_i = 1.

Fast mode (``epsilon``): each step takes the best of a random sample instead of the whole pool, the
stochastic greedy of select/stochastic.py, (1 - 1/e - epsilon) in expectation instead of exact.

Information weights (``weighting``; no paper has them). FisherSFT's design V = sum x x^T is the Fisher
information of the LM head W (logits z = W x) only if every token's softmax covariance were the same.
The head's log-likelihood gradient for a token with label y is (onehot(y) - p) x^T, so its Fisher
information is E[(e e^T) (x) x x^T] with e = onehot(y) - p. Keeping FisherSFT's d x d design and taking
the trace over the vocabulary axis gives one scalar weight per token, x -> w x:
- ``uncertainty``: expected Fisher, E_y[e e^T] = diag(p) - p p^T, trace 1 - sum_k p_k^2 = 1 - p_sqnorm;
  label-free: a token the model is sure of (p concentrated) carries little information.
- ``error``: empirical Fisher at the actual next token y, ||p - onehot(y)||^2 = 1 - 2 p_y + sum_k p_k^2
  = 1 - 2 p_next + p_sqnorm: a token the model already predicts right carries little.
- ``length``: w^2 = 1 / M_i for every token of sentence i, so it enters V as its mean token outer product
  X_i^T X_i / M_i rather than the sum. Not a Fisher weight: the evidence (README) showed the unweighted
  design preferring few long sentences, and a sum over tokens rewards length itself; this variant asks
  whether the same design wins once a sentence is worth its content, not its token count.
- ``none``: w = 1, the paper's objective (the default).
p_next and p_sqnorm come from the base model's logits at embed time (TokenFeatures).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from threadpoolctl import threadpool_limits

from infosift.device import pick_device
from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionError, SelectionResult, budget_info, check_budget, finite_or_error
from infosift.select.celf import best_of_two
from infosift.select.incremental import GreedyState
from infosift.select.logdet import first_gains
from infosift.select.stochastic import check_epsilon, stochastic_greedy


def lazy_greedy(
    features: TokenFeatures,
    costs: np.ndarray,
    budget: int,
    ratio: bool = False,
    ridge: float = 1.0,
    batch: int = 16,
    refactor_every: int = 50,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Exact lazy greedy on log det(ridge*I + sum X_i^T X_i) subject to sum c_i <= budget.

    Heap keys are stale gains (or gain / cost when ``ratio``); a sentence that no longer fits what is
    left is dropped for good (what is left only shrinks). Returns (indices, exact gains, info).
    """
    if ridge <= 0:
        raise SelectionError(f"ridge must be > 0 (log det of a singular start is -inf), got {ridge}")
    device = pick_device(device)
    price = costs.astype(np.float64) if ratio else np.ones(len(costs))
    # One BLAS thread on CPU: the greedy's many small float64 products only wait on a thread pool, and a
    # pool that shares its cores with other work (DVC stages, a second job) stalls even the big first pass.
    with threadpool_limits(limits=1 if device == "cpu" else None):
        t0 = time.perf_counter()
        g0 = first_gains(features, ridge, device)
        t_first = time.perf_counter() - t0
        heap = [(-g / price[i], i) for i, g in enumerate(g0.tolist())]  # max-heap of (stale key, index)
        heapq.heapify(heap)
        fresh_at = np.zeros(len(features), dtype=np.int64)  # step at which each heap key was computed
        state = GreedyState(features, ridge, device, refactor_every)
        chosen, chosen_gains, left, step = [], [], int(budget), 0
        while heap:
            top = heap[0][1]
            if costs[top] > left:  # too long for what is left, now and later
                heapq.heappop(heap)
                continue
            if fresh_at[top] != step:  # stale: recompute it and the next few stale ones that still fit
                idx = []
                while heap and len(idx) < batch and fresh_at[heap[0][1]] != step:
                    i = heapq.heappop(heap)[1]
                    if costs[i] <= left:
                        idx.append(i)
                idx = np.asarray(idx, dtype=np.int64)
                fresh_at[idx] = step
                for g, i in zip(state.gains(idx).tolist(), idx.tolist(), strict=True):
                    heapq.heappush(heap, (-g / price[i], i))
                continue
            heapq.heappop(heap)
            chosen.append(top)
            chosen_gains.append(state.add(top))
            left -= int(costs[top])
            step += 1
    info = {**state.summary(), "first_pass_s": t_first, "total_s": time.perf_counter() - t0, "device": device}
    return np.asarray(chosen, dtype=np.int64), np.asarray(chosen_gains), info


def knapsack_greedy(
    features: TokenFeatures, budget: int, unit: str = "examples", greedy: Callable | None = None, **greedy_params
) -> tuple[np.ndarray, np.ndarray, dict]:
    """CELF under the budget: the better of the plain-gain and the gain / cost greedy (lazy_greedy unless given)."""
    costs = check_budget(features, budget, unit)
    finite_or_error(features)
    greedy = greedy or lazy_greedy  # looked up per call: tests spy on it
    idx, g, info = best_of_two(lambda ratio: greedy(features, costs, budget, ratio, **greedy_params), costs)
    return idx, g, {**info, **budget_info(costs, idx, budget, unit)}


def greedy_params(selector: object) -> dict:
    """The lazy-greedy settings a FisherSFT-style selector was constructed with."""
    return {k: getattr(selector, k) for k in ("ridge", "batch", "refactor_every", "device")}


WEIGHTINGS = ("none", "uncertainty", "error", "length")


def information_weights(features: TokenFeatures, weighting: str) -> np.ndarray | None:
    """(total_tokens,) float32 w per token row (see the module docstring), or None for ``none``."""
    if weighting not in WEIGHTINGS:
        raise SelectionError(f"fishersft weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if weighting == "none":
        return None
    if weighting == "length":
        rows = features.lengths
        return np.repeat(1.0 / np.sqrt(np.maximum(rows, 1)), rows).astype(np.float32)
    if features.p_next is None or features.p_sqnorm is None:
        raise SelectionError(
            f"weighting={weighting!r} needs p_next and p_sqnorm from embed; these features have none (re-run embed)"
        )
    sq = np.asarray(features.p_sqnorm, dtype=np.float64)
    w2 = 1.0 - sq if weighting == "uncertainty" else 1.0 - 2.0 * np.asarray(features.p_next, dtype=np.float64) + sq
    if not np.isfinite(w2).all():
        raise SelectionError("p_next / p_sqnorm contain NaN or Inf")
    return np.sqrt(np.clip(w2, 0.0, None)).astype(np.float32)  # clip: round-off may dip below 0


def reweighted(features: TokenFeatures, weighting: str) -> TokenFeatures:
    """The same sentences with each token row x_ij scaled by its information weight w_ij (on read: see Weighted)."""
    w = information_weights(features, weighting)
    if w is None:
        return features
    return Weighted(features, w)


class Weighted(TokenFeatures):
    """Token rows x_ij * w_ij, computed as each sentence is read: the greedy reads sentences only, so a weighted
    variant holds no (total_tokens, d) float32 copy of the pool (2x a float16 memory-mapped file) beside the
    plain one. The products are those a whole-pool copy would hold, bit for bit."""

    def __init__(self, features: TokenFeatures, w: np.ndarray):
        f = features
        super().__init__(f.values, f.offsets, f.ids, f.costs, f.p_next, f.p_sqnorm)
        self.dtype = np.result_type(f.values.dtype, np.float32)  # float64 stays float64 (near-ties, tests)
        self.w = np.asarray(w).astype(self.dtype)

    def sentence(self, i: int) -> np.ndarray:
        a, b = self.offsets[i], self.offsets[i + 1]
        return np.asarray(self.values[a:b], dtype=self.dtype) * self.w[a:b, None]

    def subset(self, indices):  # noqa: ANN001, ANN201 (TokenFeatures' signature)
        raise TypeError("weighted features are read sentence by sentence; subset the unweighted ones, then weight")

    def mean_pooled(self, chunk_bytes: int = 1 << 28):  # noqa: ANN201
        raise TypeError("weighted features are read sentence by sentence; pool the unweighted ones")

    def view(self, indices):  # noqa: ANN001, ANN201 (TokenFeatures' signature)
        raise TypeError("weighted features are read sentence by sentence; view the unweighted ones, then weight")


@register("fishersft")
class FisherSFT:
    """Greedy D-optimal sentence selection on (optionally information-weighted) token embeddings.

    ``epsilon=None`` (the default): the exact lazy greedy, deterministic, the seed unused. ``epsilon`` in
    (0, 1): the stochastic greedy (select/stochastic.py), each step the best of a random sample drawn
    with the seed, (1 - 1/e - epsilon) in expectation. An example budget = N returns all, in greedy order.
    """

    deterministic = True
    distributable = True  # gains are exact marginal gains of log det, a set function: GreeDi can split it

    def __init__(
        self,
        ridge: float = 1.0,
        weighting: str = "none",
        batch: int = 16,
        refactor_every: int = 50,
        device: str | None = None,
        epsilon: float | None = None,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise SelectionError(f"fishersft weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        self.ridge, self.weighting = ridge, weighting
        self.batch, self.refactor_every, self.device = batch, refactor_every, device
        self.epsilon = check_epsilon(epsilon)
        self.deterministic = self.epsilon is None  # the pipeline selects once, or once per seed

    def select(
        self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None, unit: str = "examples"
    ) -> SelectionResult:
        check_budget(features, budget, unit)
        finite_or_error(features)
        feats = reweighted(features, self.weighting)
        greedy = None if self.epsilon is None else partial(stochastic_greedy, epsilon=self.epsilon, seed=seed)
        idx, g, info = knapsack_greedy(feats, budget, unit, greedy, **greedy_params(self))
        return SelectionResult(indices=idx, gains=g, info={**info, "weighting": self.weighting})
