"""GIP: greedy information projection of query signals onto the span of the chosen sentences.

Rows of F (m, d) are sentence embeddings (mean-pooled pre-logit features), rows of Q (k, d) are
query directions. The trace relaxation of GIP's Gaussian mutual information is

    f(S) = tr(Q P_S Qᵀ),   P_S = F_Sᵀ (G_SS + λI)⁻¹ F_S,   G = F Fᵀ,   C = F Qᵀ (m, k)
         = ‖L⁻¹ C_S‖²_F    with  L Lᵀ = G_SS + λI  (Cholesky)

Adding sentence i appends one row to L: l_i = L⁻¹ G_S,i and pivot ν_i = G_ii + λ − ‖l_i‖² (the
Schur complement, ≥ λ), and one row (C_i − l_iᵀ L⁻¹C_S)/√ν_i to L⁻¹C_S; the rows above are
unchanged. So the exact gain is

    gain_i = ‖ρ_i‖² / ν_i,   ρ_i = C_i − l_iᵀ (L⁻¹ C_S)   (1, k)

and after choosing j every candidate's l_i, ν_i, ρ_i gets one rank-one update:
u_i = (G_ij − l_iᵀ l_j)/√ν_j,  ν_i −= u_i²,  ρ_i −= u_i ρ_j/√ν_j.  A step costs O(m·(k + |S|)) once
the Gram column G_:,j is at hand; nothing is ever re-solved.

Budgets: under a token budget (sum of the chosen examples' fine-tune tokens c_i <= B) each step takes
the best gain (or gain / c_i) among the examples that still fit, and CELF (select/celf.py) keeps the
better of the two runs. An example budget is c_i = 1.

Memory: the m×m Gram (8·m² bytes: 450 MB at m = 7473) is precomputed while it fits in
``max_gram_bytes`` (256 MiB by default: m <= 5792); above that each step computes its one column F F_jᵀ
in O(m·d) instead (the total O(n·m·d) is then still below the O(m²·d) precompute), so a large pool costs
its (m, d) embeddings, not m² (1.7 GB at the 14,563 sentences of a 2 GiB pool, bench/memory_bench.py).
The Cholesky rows take 8·m·n bytes.

Where Q comes from (``select(..., targets=...)`` or ``select(..., scores=...)``):
- targets: Q = the targets' mean-pooled embeddings, one query per target/dev example.
- scores (m,) or (m, k): one query per score column, Q = Scᵀ F with each column centred, i.e. the
  cross-covariance of embeddings and scores: the direction in embedding space along which the
  score varies. This follows the reviewers' description of GIP (Q "connects the feature space and
  score space", the algorithm works in the dual and never needs Q beyond C = G·Sc); the paper's exact
  construction is unverified. Centring matters: without it a constant offset in the scores turns Q
  into the plain mean embedding. Column scales are kept, so weighted attributes keep their weights.
"""

from __future__ import annotations

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import register
from infosift.select.base import SelectionError, SelectionResult, budget_info, check_budget
from infosift.select.celf import best_of_two

MAX_GRAM_BYTES = 2**28  # the precomputed Gram's cap: past it, one column a step (same picks, see the docstring)


def sentence_embeddings(features: TokenFeatures, normalize: bool = False) -> np.ndarray:
    """(N, d) float64 mean-pooled embeddings, optionally L2-normalised (so length does not buy gain)."""
    emb = features.mean_pooled().astype(np.float64)
    if normalize:
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def score_queries(emb: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Q (k, d) = centred scoresᵀ · F: one query direction per score column."""
    sc = np.asarray(scores, dtype=np.float64)
    sc = sc[:, None] if sc.ndim == 1 else sc
    if sc.ndim != 2 or sc.shape[0] != len(emb):
        raise SelectionError(f"scores must have shape ({len(emb)},) or ({len(emb)}, k), got {np.shape(scores)}")
    if not np.isfinite(sc).all():
        raise SelectionError("scores contain NaN or Inf")
    sc = sc - sc.mean(axis=0)
    if not np.any(sc):
        raise SelectionError("scores are constant: they carry no query signal")
    return sc.T @ emb


def trace_objective(emb: np.ndarray, queries: np.ndarray, chosen: np.ndarray, ridge: float) -> float:
    """f(S) = tr(Q P_S Qᵀ) from scratch (the reference the greedy's gains must add up to)."""
    fs = emb[np.asarray(chosen, dtype=np.int64)]
    if len(fs) == 0:
        return 0.0
    cs = fs @ queries.T
    return float(np.sum(cs * np.linalg.solve(fs @ fs.T + ridge * np.eye(len(fs)), cs)))


def max_picks(costs: np.ndarray, budget: int) -> int:
    """The most examples any set within the budget can hold (the cheapest ones first)."""
    return int(np.searchsorted(np.cumsum(np.sort(costs)), budget, side="right"))


def greedy_projection(
    emb: np.ndarray,
    queries: np.ndarray,
    budget: int,
    ridge: float,
    max_gram_bytes: float = MAX_GRAM_BYTES,
    costs: np.ndarray | None = None,
    ratio: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Greedy matching pursuit on f(S) under sum c_i <= budget; returns (indices in order, exact gains, info).

    ``costs=None`` means one unit per example (then ``budget`` counts examples).
    """
    m = len(emb)
    costs = np.ones(m, dtype=np.int64) if costs is None else np.asarray(costs, dtype=np.int64)
    price = costs.astype(np.float64) if ratio else np.ones(m)
    gram = emb @ emb.T if 8.0 * m * m <= max_gram_bytes else None
    diag = np.einsum("ij,ij->i", emb, emb)
    rho = emb @ queries.T  # ρ_i = C_i while S is empty
    nu = diag + ridge  # ν_i = G_ii + λ
    n_max = max_picks(costs, budget)
    chol = np.zeros((m, n_max))  # row i holds l_i = L⁻¹ G_S,i
    taken = np.zeros(m, dtype=bool)
    indices, gains, left = [], [], int(budget)
    for t in range(n_max):
        key = np.einsum("ij,ij->i", rho, rho) / nu / price
        key[taken | (costs > left)] = -np.inf
        j = int(np.argmax(key))
        if key[j] == -np.inf:  # nothing unchosen fits any more
            break
        indices.append(j)
        gains.append(float(rho[j] @ rho[j] / nu[j]))
        taken[j], left = True, left - int(costs[j])
        g_j = gram[:, j] if gram is not None else emb @ emb[j]
        root = np.sqrt(nu[j])
        u = (g_j - chol[:, :t] @ chol[j, :t]) / root
        chol[:, t] = u
        rho -= np.outer(u, rho[j] / root)
        nu = np.maximum(nu - u * u, ridge)  # a Schur complement of (G + λI) is >= λ; clip round-off
    return np.asarray(indices, dtype=np.int64), np.asarray(gains), {}


@register("gip")
class GIPSelector:
    """Greedy information projection; ``ridge`` > 0 is the λ of P_S (it also keeps ν_i >= λ > 0)."""

    deterministic = True

    def __init__(self, ridge: float = 1.0, normalize: bool = False, max_gram_bytes: float = MAX_GRAM_BYTES):
        if not ridge > 0:
            raise SelectionError(f"gip needs ridge > 0, got {ridge}")
        self.ridge, self.normalize, self.max_gram_bytes = float(ridge), bool(normalize), max_gram_bytes

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
        if (targets is None) == (scores is None):
            raise SelectionError("gip needs exactly one query signal: targets=TokenFeatures or scores=array")
        emb = sentence_embeddings(features, self.normalize)
        if targets is not None:
            if targets.dim != features.dim:
                raise SelectionError(f"targets have dim {targets.dim}, features have dim {features.dim}")
            queries, query = sentence_embeddings(targets, self.normalize), "targets"
        else:
            queries, query = score_queries(emb, scores), "scores"
        indices, gains, info = best_of_two(
            lambda ratio: greedy_projection(emb, queries, budget, self.ridge, self.max_gram_bytes, costs, ratio), costs
        )
        info = {
            **info,
            **budget_info(costs, indices, budget, unit),
            "query": query,
            "n_queries": int(len(queries)),
            "ridge": self.ridge,
            "objective": float(gains.sum()),
        }
        return SelectionResult(indices=indices, gains=gains, info=info)
