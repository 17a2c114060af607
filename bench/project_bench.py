"""What embed.project_dim costs FisherSFT: selections made on k-dim projected features, judged on the full ones.

For each k: project the pool's token rows with embed's seeded Gaussian R ((d, k), entries N(0, 1/k);
infosift.embed.projection_matrix), store them as float16 as embed would, run FisherSFT on them, and
evaluate that selection's objective on the FULL-width features:

    ratio   = gain(S_k) / gain(S_full),  gain(S) = log det(ridge*I + sum_{i in S} X_i^T X_i) - d log ridge
    Jaccard = |S_k & S_full| / |S_k | S_full|

with S_full the selection FisherSFT makes on the full features in the same run, a random selection's ratio
as the floor (log det saturates when examples hold many tokens, so the floor can be near 1: "margin kept",
(ratio - floor) / (1 - floor), is the share of FisherSFT's advantage over random that survives), and the
selection time as a ratio to the full-width one. Each k is repeated over projection
seeds (mean and worst). embed projects the float32 hidden states before rounding; here the stored float16
features are projected (the difference is one float16 rounding).

    python bench/project_bench.py                                      # synthetic pool, ~2 min on 2 cores
    python bench/project_bench.py --features data/features/pool        # the pipeline's real pool (after embed)
    python bench/project_bench.py --quick                              # small, a smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
from select_bench import make_pool  # bench/ is on sys.path when run as a script: the benches' one synthetic pool

from infosift.embed import projection_matrix
from infosift.features import TokenFeatures
from infosift.select import get_selector


def logdet_gain(features: TokenFeatures, idx: np.ndarray, ridge: float) -> float:
    """FisherSFT's objective of the set ``idx`` over ridge*I, in float64 on ``features``."""
    v = ridge * np.eye(features.dim)
    for i in idx:
        x = np.asarray(features.sentence(int(i)), dtype=np.float64)
        v += x.T @ x
    return float(np.linalg.slogdet(v)[1] - features.dim * np.log(ridge))


def projected(features: TokenFeatures, k: int, seed: int) -> TokenFeatures:
    """The features as embed stores them with project_dim=k, project_seed=seed."""
    r = projection_matrix(features.dim, k, seed)
    values = (np.asarray(features.values, dtype=np.float32) @ r).astype(np.float16)
    return features.with_values(values)


def select(features: TokenFeatures, budget: int, ridge: float, unit: str) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    res = get_selector("fishersft", ridge=ridge, device="cpu").select(features, budget=budget, unit=unit)
    return np.asarray(res.indices), time.perf_counter() - t0


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(len(sa | sb), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", help="a TokenFeatures dir (e.g. data/features/pool); default: synthetic pool")
    ap.add_argument("--n", type=int, default=2000, help="synthetic: examples")
    ap.add_argument("--t", type=int, default=32, help="synthetic: tokens per example")
    ap.add_argument("--d", type=int, default=576, help="synthetic: width (SmolLM2-135M's)")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--unit", default="examples", choices=("examples", "tokens"))
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--ks", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--seeds", type=int, default=3, help="projection seeds per k")
    ap.add_argument("--quick", action="store_true", help="n=400, d=128, budget 30, ks 16 32 64, 2 seeds")
    args = ap.parse_args()
    if args.quick:
        args.n, args.d, args.budget, args.ks, args.seeds = 400, 128, 30, [16, 32, 64], 2
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))

    if args.features:
        full = TokenFeatures.load(args.features)
        full = full.with_values(np.asarray(full.values, dtype=np.float32))
        what = f"{args.features}: N={len(full)}, {len(full.values)} tokens, d={full.dim}"
    else:
        full = make_pool(args.n, args.t, args.d, seed=0)
        full = full.with_values(full.values.astype(np.float16).astype(np.float32))  # stored as float16, as embed does
        what = f"synthetic pool (bench/select_bench.make_pool): N={args.n} x T={args.t} x d={args.d}"
    print(f"{what}; FisherSFT ridge={args.ridge}, budget {args.budget} {args.unit}")

    ref_idx, ref_s = select(full, args.budget, args.ridge, args.unit)
    ref_gain = logdet_gain(full, ref_idx, args.ridge)
    rng = np.random.default_rng(0)
    rand = []
    for _ in range(3):
        res = get_selector("random").select(full, budget=args.budget, seed=int(rng.integers(1 << 31)), unit=args.unit)
        rand.append(logdet_gain(full, np.asarray(res.indices), args.ridge) / ref_gain)
    print(f"reference: selection on full features, gain {ref_gain:.1f} nats, {ref_s:.1f} s")
    floor = float(np.mean(rand))
    print(f"floor: random selection (3 seeds): ratio {floor:.3f}")
    head = ("k", 5), ("k/d", 6), ("ratio mean", 10), ("ratio min", 9), ("margin kept", 11), ("Jaccard", 8)
    print(" ".join(f"{name:>{w}}" for name, w in head) + f" {'time / full':>11}")
    for k in args.ks:
        if k >= full.dim:
            print(f"{k:>5}  skipped: not below d={full.dim}")
            continue
        ratios, overlaps, times = [], [], []
        for seed in range(args.seeds):
            idx, secs = select(projected(full, k, seed), args.budget, args.ridge, args.unit)
            ratios.append(logdet_gain(full, idx, args.ridge) / ref_gain)
            overlaps.append(jaccard(idx, ref_idx))
            times.append(secs / ref_s)
        kept = (np.mean(ratios) - floor) / (1.0 - floor)
        print(
            f"{k:>5} {k / full.dim:>6.3f} {np.mean(ratios):>10.3f} {np.min(ratios):>9.3f} {kept:>11.3f} "
            f"{np.mean(overlaps):>8.3f} {np.mean(times):>11.2f}"
        )
    print(
        f"(mean over {args.seeds} projection seeds; ratio min: the worst seed; margin kept: (ratio - floor) / "
        "(1 - floor), the share of FisherSFT's advantage over random that the projected selection keeps)"
    )


if __name__ == "__main__":
    main()
