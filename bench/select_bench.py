"""FisherSFT selection speed: ratios against references measured in the same run.

1. Lazy greedy vs the plain exact greedy (every gain recomputed every step, numpy slogdet), same indices.
2. Large pool (default N=20k x 64 tokens x d=576, budget 1000): time vs the floor = one batched pass
   computing all first gains, and vs one full exact-gain pass against a general V^-1 (one plain step).
3. How time and peak memory grow with N (each size in its own subprocess, so peak RSS is its own).
4. ``--epsilon``: the fast mode (stochastic greedy) vs the exact lazy greedy on the largest size: time vs
   the floor, gain evaluations, and its objective (log det gain) as a % of the exact one's.

Synthetic pool (seeded, generated chunk-wise): token x_ij = r_i * (0.8 c_i + z_ij) * s, with a
sentence topic c_i ~ N(0, I), token noise z_ij ~ N(0, I), a decaying spectrum s_k = (1 + k)^-1/2
(embeddings are anisotropic) and a per-sentence norm r_i ~ lognormal(0, 0.3).

    python bench/select_bench.py            # full run (~10 min on 2 cores)
    python bench/select_bench.py --quick    # small sizes, a smoke test
    python bench/select_bench.py --epsilon 0.1            # only 4., at N=20k x 64 x 576, budget 1000
    python bench/select_bench.py --epsilon 0.1 --quick    # only 4., small
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from infosift.features import TokenFeatures
from infosift.select import get_selector
from infosift.select.logdet import first_gains, gains, padded


def make_pool(n: int, t: int, d: int, seed: int = 0, chunk: int = 1024) -> TokenFeatures:
    """n sentences x t tokens x d float32, generated chunk-wise so peak memory is the pool itself."""
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(d, dtype=np.float32)) ** -0.5
    values = np.empty((n * t, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        topic = rng.standard_normal((m, 1, d), dtype=np.float32)
        noise = rng.standard_normal((m, t, d), dtype=np.float32)
        norm = rng.lognormal(0.0, 0.3, size=(m, 1, 1)).astype(np.float32)
        values[start * t : (start + m) * t] = (norm * (0.8 * topic + noise) * spectrum).reshape(m * t, d)
    offsets = np.arange(n + 1, dtype=np.int64) * t
    return TokenFeatures(values, offsets, [str(i) for i in range(n)])


def brute_greedy(f: TokenFeatures, budget: int, ridge: float = 1.0) -> np.ndarray:
    """The plain exact greedy: each step, V^-1 from scratch and every remaining gain via numpy slogdet."""
    x = f.values.reshape(len(f), -1, f.dim).astype(np.float64)  # equal lengths in this bench
    v, chosen = ridge * np.eye(f.dim), []
    alive = np.ones(len(f), dtype=bool)
    for _ in range(budget):
        vinv = np.linalg.inv(v)
        g = np.full(len(f), -np.inf)
        xa = x[alive]
        g[alive] = np.linalg.slogdet(np.eye(x.shape[1]) + (xa @ vinv) @ xa.transpose(0, 2, 1))[1]
        best = int(np.argmax(g))  # lowest index on ties
        chosen.append(best)
        alive[best] = False
        v += x[best].T @ x[best]
    return np.asarray(chosen)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def general_pass(f: TokenFeatures, ridge: float, device: str = "cpu", max_tokens: int = 32768) -> None:
    """All N exact gains against a general (dense) V^-1: the cost of one step of the plain greedy."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((f.dim, f.dim)) / np.sqrt(f.dim)
    vinv = np.linalg.inv(ridge * np.eye(f.dim) + a @ a.T)
    if device != "cpu":
        import torch

        vinv = torch.from_numpy(vinv).to(device)
    per = max(1, max_tokens // int(f.lengths.max()))
    for start in range(0, len(f), per):
        gains(padded(f, np.arange(start, min(start + per, len(f))), device), vinv, ridge)
    sync(device)


def vs_brute(n: int, t: int, d: int, budget: int) -> None:
    f = make_pool(n, t, d)
    sel = get_selector("fishersft", ridge=1.0)
    res, t_lazy = timed(lambda: sel.select(f, budget))
    print(f"[1] lazy greedy: {t_lazy:.2f} s ({res.info['n_gain_evals']} gain evals); running brute force...")
    ref, t_brute = timed(lambda: brute_greedy(f, budget))
    same = bool(np.array_equal(ref, res.indices))
    print(
        f"[1] N={n} T={t} d={d} budget={budget}: plain exact greedy {t_brute:.1f} s, lazy {t_lazy:.2f} s, "
        f"speedup {t_brute / t_lazy:.0f}x (goal >= 50x), identical indices: {same}"
    )


def floor_pass(f: TokenFeatures, device: str) -> float:
    """The floor, timed at its best: default BLAS threads and one thread (the greedy loop uses one)."""
    from threadpoolctl import threadpool_limits

    best = float("inf")
    for limit in (None, 1):
        with threadpool_limits(limits=limit):
            first_gains(f, 1.0, device)  # warm-up (and CUDA kernels)
            sync(device)
            best = min(best, timed(lambda: (first_gains(f, 1.0, device), sync(device)))[1])
    return best


def one_size(n: int, t: int, d: int, budget: int, device: str = "cpu") -> dict:
    f = make_pool(n, t, d)
    t_floor = floor_pass(f, device)
    _, t_general = timed(lambda: general_pass(f, 1.0, device))
    res, t_sel = timed(lambda: get_selector("fishersft", ridge=1.0, device=device).select(f, budget))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "n": n,
        "floor_s": t_floor,
        "general_pass_s": t_general,
        "select_s": t_sel,
        "evals": res.info["n_gain_evals"],
        "incremental": res.info["n_incremental"],
        "peak_gib": peak,
        "pool_gib": f.values.nbytes / 2**30,
    }


def scaling(sizes: list[int], t: int, d: int, budget: int, device: str = "cpu") -> None:
    print(f"[2,3] T={t} d={d} budget={budget} on {device}, one subprocess per N (peak RSS is that run's)")
    head = (
        f"{'N':>7} {'select s':>9} {'floor s':>8} {'ratio':>6} {'1 step s':>9} {'ratio':>6} "
        f"{'gain evals':>10} {'evals/N':>7} {'updated':>7} {'pool GiB':>8} {'peak GiB':>8}"
    )
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--tokens", str(t), "--dim", str(d), "--budget", str(budget)]
        cmd += ["--device", device]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rows.append(r)
        print(f"  N={n}: select {r['select_s']:.1f} s, floor {r['floor_s']:.1f} s", flush=True)
    print(head)
    for r in rows:
        print(
            f"{r['n']:>7} {r['select_s']:>9.1f} {r['floor_s']:>8.2f} {r['select_s'] / r['floor_s']:>6.1f} "
            f"{r['general_pass_s']:>9.2f} {r['select_s'] / r['general_pass_s']:>6.1f} {r['evals']:>10} "
            f"{r['evals'] / r['n']:>7.2f} {r['incremental'] / r['evals']:>7.0%} {r['pool_gib']:>8.2f} "
            f"{r['peak_gib']:>8.2f}"
        )
    print(
        "ratio = select / floor (one batched pass of all first gains, V = ridge*I; goal <= 3x); "
        "'1 step' = all N gains against a general V^-1, i.e. one step of the plain greedy; 'updated' = share "
        "of gain evaluations done by the Woodbury-factor update instead of from scratch."
    )


def fast_mode(n: int, t: int, d: int, budget: int, epsilon: float, device: str = "cpu") -> None:
    f = make_pool(n, t, d)
    t_floor = floor_pass(f, device)
    print(f"[4] N={n} T={t} d={d} budget={budget} on {device}: floor {t_floor:.2f} s; running the exact greedy...")
    exact, t_exact = timed(lambda: get_selector("fishersft", ridge=1.0, device=device).select(f, budget))
    fast, t_fast = timed(
        lambda: get_selector("fishersft", ridge=1.0, device=device, epsilon=epsilon).select(f, budget, seed=0)
    )
    f_exact, f_fast = float(exact.gains.sum()), float(fast.gains.sum())
    print(f"{'':>22} {'select s':>9} {'/ floor':>8} {'gain evals':>10} {'objective':>10} {'% exact':>8}")
    for name, res, secs in (("exact", exact, t_exact), (f"epsilon={epsilon} seed 0", fast, t_fast)):
        obj = float(res.gains.sum())
        print(
            f"{name:>22} {secs:>9.1f} {secs / t_floor:>8.2f} {res.info['n_gain_evals']:>10} {obj:>10.1f} "
            f"{obj / f_exact:>8.2%}"
        )
    print(
        f"sample size s = {fast.info['sample_size']} of {n}; speedup over exact {t_exact / t_fast:.1f}x; "
        f"objective = log det gain over ridge*I, fast {f_fast:.1f} vs exact {f_exact:.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--one", type=int, help="internal: time one size and print a JSON line")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--skip-brute", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu (numpy) or cuda (torch); the brute force runs on CPU")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000, 20000])
    ap.add_argument("--epsilon", type=float, help="only 4.: fast mode at this epsilon, on the largest of --sizes")
    args = ap.parse_args()
    if args.epsilon is not None:
        if args.quick:
            fast_mode(1000, 16, 64, 100, args.epsilon, args.device)
        else:
            fast_mode(max(args.sizes), args.tokens, args.dim, args.budget, args.epsilon, args.device)
        return
    if args.one:
        print(json.dumps(one_size(args.one, args.tokens, args.dim, args.budget, args.device)))
        return
    if args.quick:
        vs_brute(500, 16, 32, 50)
        scaling([500, 1000], 16, 64, 100, args.device)
        return
    if not args.skip_brute:
        vs_brute(5000, 32, 128, 300)
    scaling(args.sizes, args.tokens, args.dim, args.budget, args.device)


if __name__ == "__main__":
    main()
