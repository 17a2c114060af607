"""Density sampling (in the spirit of Sachdeva et al. 2024): favour examples from sparse regions.

Reading chosen here: embed each sentence as its mean-pooled, L2-normalised vector e_i; its density is
rho_i = 1 / (eps + mean Euclidean distance to its k nearest neighbours). ``mode="sample"`` (default)
draws the budget without replacement with probability proportional to 1 / rho_i (seeded, Gumbel top-k);
``mode="lowest"`` takes the budget lowest densities (ties: lowest index). Either order fills a token
budget (base.fill). Distances are computed in row
chunks, so memory is O(chunk * N + N * k), never N x N.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionError, SelectionResult, budget_info, check_budget, fill, finite_or_error


def normalized_embeddings(features: TokenFeatures) -> np.ndarray:
    e = features.mean_pooled().astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def knn_mean_distance(e: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """(N,) mean distance from each row to its k nearest other rows (self excluded)."""
    n = len(e)
    k = min(k, n - 1)
    if k < 1:
        return np.ones(n)
    sq = (e * e).sum(1)
    out = np.empty(n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * e[start:stop] @ e.T
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not your own neighbour
        near = np.partition(d2, k - 1, axis=1)[:, :k]
        out[start:stop] = np.sqrt(np.maximum(near, 0.0)).mean(1)
    return out


@register("density")
class DensitySampling:
    def __init__(self, k: int = 10, mode: str = "sample", eps: float = 1e-6, chunk: int = 1024):
        if mode not in ("sample", "lowest"):
            raise SelectionError(f"density mode must be 'sample' or 'lowest', got {mode!r}")
        self.k, self.mode, self.eps, self.chunk = k, mode, eps, chunk

    deterministic = False  # mode="sample" draws with the seed (mode="lowest" ignores it)

    def select(
        self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None, unit: str = "examples"
    ) -> SelectionResult:
        costs = check_budget(features, budget, unit)
        finite_or_error(features)
        density = 1.0 / (self.eps + knn_mean_distance(normalized_embeddings(features), self.k, self.chunk))
        if self.mode == "lowest":
            order = np.lexsort((np.arange(len(density)), density))
        else:  # Gumbel top-k == sequential sampling without replacement, p_i proportional to 1 / density_i
            keys = -np.log(density) + np.random.default_rng(seed).gumbel(size=len(density))
            order = np.argsort(-keys, kind="stable")
        idx = fill(order, costs, budget)
        info = {**budget_info(costs, idx, budget, unit), "density": density}
        return SelectionResult(indices=idx, gains=None, info=info)
