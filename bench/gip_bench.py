"""GIP bench: incremental greedy (rank-one Cholesky updates) vs a brute-force greedy that re-solves
tr(Q P_S Qᵀ) from scratch for every candidate, on the same instance in the same run.

    python bench/gip_bench.py [--m 400 --d 64 --k 16 --budget 40]

Prints both times, their ratio, and whether the two picked the same sentences with the same gains.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from infosift.select.gip import greedy_projection


def brute_greedy(emb: np.ndarray, queries: np.ndarray, budget: int, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy by definition: every step, every candidate, f(S ∪ {i}) solved from scratch."""
    c = emb @ queries.T

    def f(s: list[int]) -> float:
        cs = c[s]
        return float(np.sum(cs * np.linalg.solve(emb[s] @ emb[s].T + ridge * np.eye(len(s)), cs))) if s else 0.0

    chosen, gains = [], []
    for _ in range(budget):
        base = f(chosen)
        cand = np.setdiff1d(np.arange(len(emb)), chosen)
        vals = np.array([f(chosen + [int(i)]) - base for i in cand])
        chosen.append(int(cand[np.argmax(vals)]))
        gains.append(vals.max())
    return np.array(chosen), np.array(gains)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=400)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    emb, queries = rng.normal(size=(args.m, args.d)), rng.normal(size=(args.k, args.d))

    t0 = time.perf_counter()
    fast_idx, fast_gains, _ = greedy_projection(emb, queries, args.budget, args.ridge)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_idx, ref_gains = brute_greedy(emb, queries, args.budget, args.ridge)
    t_ref = time.perf_counter() - t0

    same = bool(np.array_equal(fast_idx, ref_idx))
    err = float(np.max(np.abs(fast_gains - ref_gains) / np.maximum(np.abs(ref_gains), 1e-12)))
    print(f"gip m={args.m} d={args.d} k={args.k} budget={args.budget} ridge={args.ridge}")
    print(f"brute-force greedy {t_ref:.3f}s  incremental {t_fast:.4f}s  speedup x{t_ref / t_fast:.0f}")
    print(f"same selection: {same}  max relative gain error: {err:.1e}")


if __name__ == "__main__":
    main()
