"""FisherSFT selection speed: ratios against references measured in the same run.

1. Lazy greedy vs the plain exact greedy (every gain recomputed every step, numpy slogdet), same indices.
2. Large pool (default N=20k x 64 tokens x d=576, budget 1000): time vs the floor = one batched pass
   computing all first gains, and vs one full exact-gain pass against a general V^-1 (one plain step).
3. How time and peak memory grow with N (each size in its own subprocess, so peak RSS is its own).
4. ``--epsilon``: the fast mode (stochastic greedy) vs the exact lazy greedy on the largest size: time vs
   the floor, gain evaluations, and its objective (log det gain) as a % of the exact one's.
5. ``--partitions K ...``: GreeDi (select/greedi.py) with each k vs the central exact greedy on the largest
   size: objective as a % of central, which of (union, best part) won, time per round. ``--engine ray`` runs
   round 1 on a local Ray cluster (``--cpus``, default all cores) from a memory-mapped copy of the pool: time vs k.
   With ``--epsilon`` too, both share one exact reference.
6. ``--big N``: a memory-mapped float16 pool of N x 32 x 128 (``--big-shape``) written chunk-wise to ``--dir``,
   GreeDi on Ray with each ``--partitions`` k (k = 1: one task, the central greedy): its size on disk, time
   per round, per-task read and select time per example row, and from those a paper estimate for 10M examples.

Synthetic pool (seeded, generated chunk-wise): token x_ij = r_i * (0.8 c_i + z_ij) * s, with a
sentence topic c_i ~ N(0, I), token noise z_ij ~ N(0, I), a decaying spectrum s_k = (1 + k)^-1/2
(embeddings are anisotropic) and a per-sentence norm r_i ~ lognormal(0, 0.3).

    python bench/select_bench.py            # full run (~10 min on 2 cores)
    python bench/select_bench.py --quick    # small sizes, a smoke test
    python bench/select_bench.py --epsilon 0.1 0.3        # only 4., at N=20k x 64 x 576, budget 1000
    python bench/select_bench.py --epsilon 0.1 --quick    # only 4., small
    python bench/select_bench.py --epsilon 0.1 --partitions 1 2 4 --engine ray   # 4. and 5. at N=20k
    python bench/select_bench.py --partitions 2 --engine ray --quick                # 5., small
    python bench/select_bench.py --big 200000 --partitions 1 2 4                    # 6.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from record import record_to  # bench/ is on sys.path when run as a script
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from infosift.features import IDS, OFFSETS, VALUES, TokenFeatures
from infosift.select import get_selector
from infosift.select.logdet import first_gains, gains, padded

ROOT = Path(__file__).resolve().parent.parent


def pool_chunks(n: int, t: int, d: int, seed: int = 0, chunk: int = 1024):
    """(first sentence, its (m * t, d) float32 token rows) for the synthetic pool, chunk after chunk."""
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(d, dtype=np.float32)) ** -0.5
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        topic = rng.standard_normal((m, 1, d), dtype=np.float32)
        noise = rng.standard_normal((m, t, d), dtype=np.float32)
        norm = rng.lognormal(0.0, 0.3, size=(m, 1, 1)).astype(np.float32)
        yield start, (norm * (0.8 * topic + noise) * spectrum).reshape(m * t, d)


def make_pool(n: int, t: int, d: int, seed: int = 0, chunk: int = 1024) -> TokenFeatures:
    """n sentences x t tokens x d float32, generated chunk-wise so peak memory is the pool itself."""
    values = np.empty((n * t, d), dtype=np.float32)
    for start, block in pool_chunks(n, t, d, seed, chunk):
        values[start * t : start * t + len(block)] = block
    offsets = np.arange(n + 1, dtype=np.int64) * t
    return TokenFeatures(values, offsets, [str(i) for i in range(n)])


def write_pool(path: Path, n: int, t: int, d: int, dtype=np.float16, seed: int = 0, progress: bool = True) -> None:
    """The same pool written chunk-wise straight into a TokenFeatures directory: never whole in memory."""
    path.mkdir(parents=True, exist_ok=True)
    values = np.lib.format.open_memmap(path / VALUES, mode="w+", dtype=dtype, shape=(n * t, d))
    chunks = tqdm(pool_chunks(n, t, d, seed, 4096), total=math.ceil(n / 4096), desc="write pool", disable=not progress)
    for start, block in chunks:
        values[start * t : start * t + len(block)] = block
    values.flush()
    del values
    np.save(path / OFFSETS, np.arange(n + 1, dtype=np.int64) * t)
    (path / IDS).write_text(json.dumps([str(i) for i in range(n)]))


def start_ray(cpus: int | None) -> float:
    """A local Ray cluster for this run (workers import this checkout); returns its start-up seconds."""
    import ray

    t0 = time.perf_counter()
    env = {"PYTHONPATH": str(ROOT)}
    for attempt in range(3):  # on a loaded machine the raylet may give up on a slow agent (ray issue #65983)
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env})
            break
        except Exception as e:  # Ray raises a bare Exception here
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
            print(f"ray.init: {e}; retrying", flush=True)
            ray.shutdown()
    return time.perf_counter() - t0


def warm_ray(tmp: Path, workers: int) -> None:
    """One small GreeDi run with a task per worker, so the timed runs do not pay the workers' imports."""
    write_pool(tmp / "warm", 64 * workers, 4, 8, progress=False)
    small = TokenFeatures.load(tmp / "warm", mmap=True)
    get_selector("fishersft", partitions=workers, engine="ray").select(small, 4)


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


def cpu_timed(fn):
    """(result, CPU seconds of this process) on one BLAS thread: the work, whatever else shares the cores."""
    with threadpool_limits(limits=1):
        t0 = time.process_time()
        out = fn()
        return out, time.process_time() - t0


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


def exact_reference(n: int, t: int, d: int, budget: int, device: str = "cpu"):
    """The pool, the floor and the central exact lazy greedy on it: the references of 4. and 5."""
    f = make_pool(n, t, d)
    t_floor = floor_pass(f, device)
    c_floor = cpu_timed(lambda: first_gains(f, 1.0, device))[1]
    print(f"N={n} T={t} d={d} budget={budget} on {device}: floor {t_floor:.2f} s; running the exact greedy...")
    t0 = time.perf_counter()
    exact, c_exact = cpu_timed(lambda: get_selector("fishersft", ridge=1.0, device=device).select(f, budget))
    t_exact = time.perf_counter() - t0
    print(
        f"exact (central) greedy: {t_exact:.1f} s = {t_exact / t_floor:.1f}x the floor; CPU {c_exact:.1f} s = "
        f"{c_exact / c_floor:.1f}x the floor's {c_floor:.1f} CPU s on one thread",
        flush=True,
    )
    return f, t_floor, exact, t_exact, c_floor, c_exact


def fast_mode(ref, budget: int, epsilons: list[float], device: str = "cpu") -> None:
    f, t_floor, exact, t_exact, c_floor, c_exact = ref
    f_exact = float(exact.gains.sum())
    print(f"[4] fast mode (stochastic greedy) vs the exact greedy, seed 0; floor {t_floor:.2f} s, {c_floor:.1f} CPU s")
    print(
        f"{'':>22} {'select s':>9} {'/ floor':>8} {'CPU s':>7} {'/ floor':>8} {'gain evals':>10} {'objective':>10} "
        f"{'% exact':>8} {'s':>6}"
    )
    rows = [("exact", exact, t_exact, c_exact)]
    for eps in epsilons:
        sel = get_selector("fishersft", ridge=1.0, device=device, epsilon=eps)
        t0 = time.perf_counter()
        res, cpu = cpu_timed(lambda sel=sel: sel.select(f, budget, seed=0))
        rows.append((f"epsilon={eps}", res, time.perf_counter() - t0, cpu))
    for name, res, secs, cpu in rows:
        obj, s = float(res.gains.sum()), res.info.get("sample_size", len(f))
        print(
            f"{name:>22} {secs:>9.1f} {secs / t_floor:>8.2f} {cpu:>7.1f} {cpu / c_floor:>8.2f} "
            f"{res.info['n_gain_evals']:>10} {obj:>10.1f} {obj / f_exact:>8.2%} {s:>6}",
            flush=True,
        )
    print(
        f"objective = log det gain over ridge*I; s = candidates sampled per step (of {len(f)}); CPU = this "
        "process's CPU seconds on one BLAS thread (the floor's too): the work, whatever else shares the cores; "
        "goal: <= 3x the floor with >= 99% of exact"
    )


def distributed(ref, budget: int, ks: list[int], engine: str, cpus: int | None, device: str = "cpu") -> None:
    """5.: GreeDi with each k vs the central exact greedy (objective, time per round)."""
    f, _, exact, t_exact, _, c_exact = ref
    f_exact = float(exact.gains.sum())
    with tempfile.TemporaryDirectory(prefix="greedi-bench-") as tmp:
        src = f
        if engine == "ray":
            f.save(Path(tmp) / "pool")  # the same float32 values, memory-mapped: tasks read only their rows
            src = TokenFeatures.load(Path(tmp) / "pool", mmap=True)
            secs = start_ray(cpus)
            import ray

            workers = int(ray.cluster_resources().get("CPU", 1))
            warm_ray(Path(tmp), workers)
            print(f"[5] local Ray cluster: {workers} CPUs (started in {secs:.1f} s; workers warmed up)")
        print(
            f"[5] GreeDi on engine={engine}; central exact greedy {t_exact:.1f} s ({c_exact:.1f} CPU s), "
            f"objective {f_exact:.1f}"
        )
        print(
            f"{'k':>3} {'select s':>9} {'/ exact':>8} {'round 1 s':>9} {'round 2 s':>9} {'slowest part s':>14} "
            f"{'cpu path s':>10} {'objective':>10} {'% exact':>8} {'winner':>7}"
        )
        for k in ks:
            sel = get_selector("fishersft", ridge=1.0, device=device, partitions=k, engine=engine)
            res, secs = timed(lambda sel=sel: sel.select(src, budget, seed=0))
            obj = float(res.gains.sum())
            slowest = max(p["select_s"] + p.get("read_s", 0.0) for p in res.info["parts"])
            path = max(p["cpu_s"] for p in res.info["parts"]) + res.info.get("round2_cpu_s", 0.0)
            print(
                f"{k:>3} {secs:>9.1f} {secs / t_exact:>8.2f} {res.info['round1_s']:>9.1f} {res.info['round2_s']:>9.1f} "
                f"{slowest:>14.1f} {path:>10.1f} {obj:>10.1f} {obj / f_exact:>8.2%} {res.info['greedi_winner']:>7}",
                flush=True,
            )
    print(
        "k = 1: one part, the central greedy (on a worker for engine=ray); round 1 = the k part greedies "
        "(in parallel on Ray), round 2 = the greedy over the union of their k * budget winners; 'cpu path' = CPU "
        "seconds of the slowest part + round 2: the wall time with a free core per part, whatever else runs here; "
        f"partition seed 0; {os.cpu_count()} cores on this machine"
    )


def anon_gib() -> float:
    """This process's anonymous resident memory (Linux): what it holds, unlike mapped file pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def big_pool(n: int, t: int, d: int, ks: list[int], budget: int, out: Path, cpus: int | None) -> None:
    """6.: a memory-mapped float16 pool on disk, GreeDi on Ray, and a paper estimate for 10M examples."""
    path = out / f"pool-{n}x{t}x{d}-f16"
    if not (path / IDS).exists():  # in a child process, so this one's peak RSS is the selection's alone
        writer = multiprocessing.get_context("fork").Process(target=write_pool, args=(path, n, t, d))
        _, secs = timed(lambda: (writer.start(), writer.join()))
        if writer.exitcode != 0:
            raise SystemExit(f"writing {path} failed (exit code {writer.exitcode})")
        print(f"[6] wrote {path} in {secs:.0f} s")
    f = TokenFeatures.load(path, mmap=True)
    disk = sum(p.stat().st_size for p in path.iterdir())
    secs = start_ray(cpus)
    import ray

    workers = int(ray.cluster_resources().get("CPU", 1))
    with tempfile.TemporaryDirectory(prefix="greedi-bench-") as tmp:
        warm_ray(Path(tmp), workers)
    print(
        f"[6] N={n} T={t} d={d} float16 memory-mapped: {disk / 2**30:.2f} GiB on disk "
        f"({f.values.nbytes / 2**30:.2f} GiB values); local Ray with {workers} CPUs (started in {secs:.1f} s); "
        f"budget {budget}"
    )
    print(
        f"{'k':>3} {'rows/part':>9} {'select s':>9} {'round 1 s':>9} {'round 2 s':>9} {'task read s':>11} "
        f"{'task cpu s':>10} {'cpu path s':>10} {'objective':>10} {'% k=1':>7} {'winner':>7} {'driver anon GiB':>15}"
    )
    tasks, f_one = [], None  # (rows, read wall + select CPU seconds) of every task
    for k in ks:
        sel = get_selector("fishersft", ridge=1.0, partitions=k, engine="ray")
        res, secs = timed(lambda sel=sel: sel.select(f, budget, seed=0))
        obj = float(res.gains.sum())
        f_one = obj if k == 1 else f_one
        parts = res.info["parts"]
        tasks += [(int(p["rows"]), p["read_s"] + p["cpu_s"]) for p in parts]
        read, cpu = max(p["read_s"] for p in parts), max(p["cpu_s"] for p in parts)
        path = max(p["read_s"] + p["cpu_s"] for p in parts) + res.info.get("round2_cpu_s", 0.0)
        rss = anon_gib()
        print(
            f"{k:>3} {parts[0]['rows']:>9} {secs:>9.1f} {res.info['round1_s']:>9.1f} {res.info['round2_s']:>9.1f} "
            f"{read:>11.1f} {cpu:>10.1f} {path:>10.1f} {obj:>10.1f} "
            f"{'' if f_one is None else f'{obj / f_one:.2%}':>7} {res.info['greedi_winner']:>7} {rss:>15.2f}",
            flush=True,
        )
    sample = f.subset(np.arange(min(n, 20000)))  # the floor per row, one core, on rows read from the file
    floor_row = cpu_timed(lambda: first_gains(sample, 1.0, "cpu"))[1] / len(sample)
    big, b = 10_000_000, budget
    k = math.ceil(math.sqrt(big / b))  # parts of N/k rows and a union of k*b rows are then the same size
    part = big / k
    rows, secs = min(tasks, key=lambda task: abs(task[0] - part))  # the measured task nearest that size
    task = secs * part / rows  # linear in rows: pessimistic, a greedy's steps grow slower than its pool
    most, whole = max(tasks)  # the largest task measured (k = 1: the central greedy)
    print(
        f"floor (first pass, V = ridge*I) {floor_row * 1e6:.1f} CPU us per example on one core; "
        f"the measured task nearest {part:,.0f} rows: {rows:,} rows in {secs:.1f} s (read wall + select CPU)"
    )
    print(
        "'task read s' = the slowest task's wall time to map and gather its rows; 'task cpu s' = the slowest "
        "task's select CPU seconds; 'cpu path s' = slowest read + CPU, plus round 2's CPU: the wall time with a "
        "free core per part; 'driver anon GiB' = this process's own memory (RssAnon) after the run: file pages "
        "mapped around the rows round 2 reads are page cache, shared and reclaimable, not held"
    )
    print(
        f"paper estimate, {big:,} examples x {t} x {d} float16 ({big * t * d * 2 / 2**30:.0f} GiB on a shared "
        f"filesystem), budget {b}: k = ceil(sqrt(N / budget)) = {k} parts of {part:,.0f} rows, so round 2's union "
        f"({k * b:,} rows) is a part's size too; round 1 = {k} tasks at once, ~{task:.0f} s each "
        f"(that task scaled linearly); round 2 on the driver ~{task:.0f} s; total ~{2 * task / 60:.0f} min on "
        f"{k} workers plus reading {part * t * d * 2 / 2**30:.2f} GiB per task. One machine instead: "
        f"{big * t * d * 2 / 2**30:.0f} GiB of values, a first pass alone of {floor_row * big / 60:.0f} min, and "
        f"the central greedy ~{whole * big / most / 60:.0f} min (the {most:,}-row task scaled linearly)"
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
    ap.add_argument("--epsilon", type=float, nargs="+", help="4.: fast mode at these epsilons, largest of --sizes")
    ap.add_argument("--partitions", type=int, nargs="+", help="5. (or 6. with --big): GreeDi with these k")
    ap.add_argument("--engine", default="local", choices=["local", "ray"], help="5.: where GreeDi's round 1 runs")
    ap.add_argument("--cpus", type=int, help="CPUs of the local Ray cluster (default: all cores)")
    ap.add_argument("--big", type=int, help="6.: a memory-mapped float16 pool of this many examples, GreeDi on Ray")
    ap.add_argument("--big-shape", type=int, nargs=2, default=[32, 128], metavar=("T", "D"))
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "infosift-bench", help="6.: pool dir")
    ap.add_argument("--out", type=Path, help="also write the report to this file (results/bench/)")
    args = ap.parse_args()
    record_to(None if args.one else args.out)  # a child's output is its parent's to report
    if args.big:
        big_pool(args.big, *args.big_shape, args.partitions or [1, 2, 4], args.budget, args.dir, args.cpus)
        return
    if args.epsilon or args.partitions:
        shape = (1000, 16, 64, 100) if args.quick else (max(args.sizes), args.tokens, args.dim, args.budget)
        ref = exact_reference(*shape, device=args.device)
        if args.epsilon:
            fast_mode(ref, shape[-1], args.epsilon, args.device)
        if args.partitions:
            distributed(ref, shape[-1], args.partitions, args.engine, args.cpus, args.device)
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
