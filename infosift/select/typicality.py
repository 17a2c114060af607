"""TypiClust (Hacohen, Dekel & Weinshall 2022, arXiv 2202.02794): at small budgets, label typical examples.

Their finding: with few labels, *typical* examples (dense regions of the data) teach more than atypical
or uncertain ones, and the order flips as the budget grows. The selection, as in their paper and code:

1. embed each example as its mean-pooled, L2-normalised token features e_i (select/density.py);
2. cluster the pool with k-means, k = the budget in examples (a token budget: k = budget / mean cost,
   rounded, at least 1, at most N), seeded with the selection seed;
3. in each cluster C, typicality(x) = 1 / (eps + mean Euclidean distance from x to its K nearest
   neighbours within C), K = min(k_nn, |C| // 2) (their code: K_NN = 20, halved in small clusters;
   a cluster of one has typicality 1 / eps);
4. take the most typical example of each cluster, largest clusters first (their order: the clusters with
   the fewest labelled points, ties to the largest; here nothing is labelled yet).

At an example budget k that is the selection. So that a token budget is filled (base.fill), the order
goes on round by round: the second most typical of each cluster (largest first), then the third, ...
Ties break on the lowest index. Two departures from their code: it reads squared distances from faiss,
while the paper's definition, used here, is the plain Euclidean distance; and it skips clusters of fewer
than 5 points, while here every cluster counts, so that an example budget of k buys k examples.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionError, SelectionResult, budget_info, check_budget, fill, finite_or_error
from infosift.select.density import knn_mean_distance, normalized_embeddings


def n_clusters(costs: np.ndarray, budget: int, unit: str) -> int:
    """k: the budget in examples, or the examples a token budget buys at the pool's mean cost."""
    n = len(costs)
    if unit == "examples":
        return int(budget)
    return int(min(n, max(1, round(budget / float(np.mean(costs))))))


def kmeans_labels(e: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    """(N,) cluster labels of scikit-learn's k-means (k-means++ init, ``n_init`` restarts), seeded."""
    from sklearn.cluster import KMeans

    if k >= len(e):  # every example its own cluster: what k-means would find, without its warning
        return np.arange(len(e), dtype=np.int64)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    return km.fit_predict(e).astype(np.int64)


def typicality(e: np.ndarray, k_nn: int, eps: float = 1e-5) -> np.ndarray:
    """(len(e),) 1 / (eps + mean distance to the K nearest others), K = min(k_nn, len(e) // 2)."""
    k = min(k_nn, len(e) // 2)
    if k < 1:
        return np.full(len(e), 1.0 / eps)
    return 1.0 / (eps + knn_mean_distance(e, k))


def typical_order(e: np.ndarray, labels: np.ndarray, k_nn: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, typicality): every index by its rank within its cluster (most typical first), then by larger
    cluster, then lower index; typicality of each example within its cluster."""
    n = len(labels)
    rank, size, typ = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        t = typicality(e[members], k_nn)
        typ[members] = t
        by_typ = members[np.lexsort((members, -t))]
        rank[by_typ] = np.arange(len(members))
        size[members] = len(members)
    return np.lexsort((np.arange(n), -size, rank)).astype(np.int64), typ


@register("typicality")
class TypiClust:
    deterministic = False  # k-means starts from a seeded k-means++ draw: one selection per seed

    def __init__(self, k_nn: int = 20, n_init: int = 3):
        if isinstance(k_nn, bool) or not isinstance(k_nn, int) or k_nn < 1:
            raise SelectionError(f"typicality k_nn must be a whole number >= 1, got {k_nn!r}")
        if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
            raise SelectionError(f"typicality n_init must be a whole number >= 1, got {n_init!r}")
        self.k_nn, self.n_init = k_nn, n_init

    def select(
        self, features: TokenFeatures, budget: int, seed: int = 0, targets=None, scores=None, unit: str = "examples"
    ) -> SelectionResult:
        costs = check_budget(features, budget, unit)
        finite_or_error(features)
        e = normalized_embeddings(features)
        k = n_clusters(costs, budget, unit)
        labels = kmeans_labels(e, k, seed, self.n_init)
        order, typ = typical_order(e, labels, self.k_nn)
        idx = fill(order, costs, budget)
        info = {**budget_info(costs, idx, budget, unit), "clusters": int(len(np.unique(labels))), "typicality": typ}
        return SelectionResult(indices=idx, gains=None, info=info)
