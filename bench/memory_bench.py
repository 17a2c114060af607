"""Peak memory of each selector on a memory-mapped pool, against the pool's size on disk and plain FisherSFT.

A synthetic float16 pool (about ``--gib`` GiB of token rows: N sentences of ``--tokens`` tokens on average,
lengths spread over [tokens/2, 3 tokens/2] so that token budgets price them differently, width ``--dim``;
written chunk-wise, so the writer never holds it) is selected from by each selector in its own subprocess. The
peak RSS a process reports counts the pages of the mapped file it touched, so reading the whole pool once costs
about its size, and a float32 copy of it would cost twice that again. Printed per selector: the peak RSS its
selection added over what the process held before (imports and the loaded pool's metadata excluded; Linux: the
peak is restarted through /proc/self/clear_refs), that / file size, that / plain FisherSFT's, and its seconds.
The run fails (exit 1) when a selector adds more than ``--limit`` (1.5) times plain FisherSFT's peak, fails,
or runs past ``--timeout``.

    python bench/memory_bench.py                       # 2 GiB of token rows (~2.1 GiB of disk in --dir)
    python bench/memory_bench.py --gib 0.25            # a quick check of the same ratios
    python bench/memory_bench.py --gib 0.25 --selectors fishersft density

Time at the default pool (2 GiB: N = 14,563 sentences of 128 tokens x 576, budget 20 examples, or 20 x 128
tokens for the *-tokens rows): every selector reads the pool once or twice, linear in its size, except
- density: k nearest neighbours over all pairs, O(N^2 d) (about 2.4e11 flops at the default N: a minute);
- typicality: k-means with k = budget clusters, O(N k d) a pass, then neighbours within each cluster,
  O(N^2 d / k);
- GIP: linear here (one Gram column a step, O(budget N d)); it precomputes the N x N Gram, O(N^2 d), only while
  that fits in 256 MiB (N <= 5792).
So both the pool's size and the sentence length set N: keep ``--tokens`` at 128 or more for a 2 GiB pool (at 16
tokens a sentence N is 8x larger and density 64x slower). Each child runs under ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from record import record_to  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> (registry name, constructor arguments, how it is run). "targets"/"scores": its query signal;
# "tokens": a token budget (CELF's two greedies); "filter": behind the quality filter (drop 25%).
SELECTORS = {
    "fishersft": ("fishersft", {"ridge": 1.0}, {}),
    "fishersft-tokens": ("fishersft", {"ridge": 1.0}, {"tokens": True}),
    "fishersft-err": ("fishersft", {"ridge": 1.0, "weighting": "error"}, {}),
    "fishersft-unc": ("fishersft", {"ridge": 1.0, "weighting": "uncertainty"}, {}),
    "fishersft-len": ("fishersft", {"ridge": 1.0, "weighting": "length"}, {}),
    "fishersft-eps": ("fishersft", {"ridge": 1.0, "epsilon": 0.1}, {}),
    "fishersft-greedi": ("fishersft", {"ridge": 1.0, "partitions": 2}, {}),
    "fishersft-filter": ("fishersft", {"ridge": 1.0}, {"filter": True}),
    "sentence_od": ("sentence_od", {"ridge": 1.0}, {}),
    "sentence_od-tokens": ("sentence_od", {"ridge": 1.0}, {"tokens": True}),
    "density": ("density", {}, {}),
    "typicality": ("typicality", {}, {}),
    "gip-target": ("gip", {"ridge": 1.0}, {"targets": True}),
    "gip-scores": ("gip", {"ridge": 1.0}, {"scores": True}),
    "length_matched": ("length_matched", {"of": {"selector": "sentence_od", "ridge": 1.0}}, {}),
    "length": ("length", {}, {}),
    "dsir": ("dsir", {}, {"scores": True}),
    "random": ("random", {}, {}),
}


def write_pool(out: Path, gib: float, tokens: int, dim: int, seed: int = 0, chunk: int = 4096) -> int:
    """values.npy (float16), offsets.npy, ids.json, costs.npy, p_next.npy, p_sqnorm.npy under ``out``; its bytes."""
    from infosift.features import COSTS, IDS, OFFSETS, P_NEXT, P_SQNORM, VALUES

    n = max(2, int(gib * 2**30 / (tokens * dim * 2)))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, tokens // 2), tokens + tokens // 2 + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    out.mkdir(parents=True, exist_ok=True)
    values = np.lib.format.open_memmap(out / VALUES, mode="w+", dtype=np.float16, shape=(total, dim))
    p_next = np.lib.format.open_memmap(out / P_NEXT, mode="w+", dtype=np.float32, shape=(total,))
    p_sq = np.lib.format.open_memmap(out / P_SQNORM, mode="w+", dtype=np.float32, shape=(total,))
    scale = (1.0 + np.arange(dim)) ** -0.5
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        lo, hi = int(offsets[s]), int(offsets[e])
        topic = np.repeat(rng.standard_normal((e - s, dim)), lengths[s:e], axis=0)
        x = (0.8 * topic + rng.standard_normal((hi - lo, dim))) * scale
        values[lo:hi] = x.astype(np.float16)
        p = rng.uniform(0, 1, hi - lo).astype(np.float32)
        p_next[lo:hi], p_sq[lo:hi] = p, p * p + 0.05
    for a in (values, p_next, p_sq):
        a.flush()
    del values, p_next, p_sq
    np.save(out / OFFSETS, offsets)
    np.save(out / COSTS, lengths.astype(np.int64) + 16)  # a prompt of 16 tokens each
    (out / IDS).write_text(json.dumps([f"s{i}" for i in range(n)]))
    return sum(f.stat().st_size for f in out.iterdir())


def child(name: str, pool: Path, budget: int) -> None:
    """One selector on the mapped pool; prints {"rss": peak bytes added, "seconds": ...} as JSON."""
    from infosift.features import TokenFeatures
    from infosift.select import get_selector
    from infosift.select.filtered import Filtered

    registry, kwargs, how = SELECTORS[name]
    features = TokenFeatures.load(pool, mmap=True)
    rng = np.random.default_rng(1)
    select: dict = {"seed": 0, "budget": budget}
    if how.get("targets"):
        select["targets"] = features.subset(np.arange(min(50, len(features))))
    if how.get("scores"):
        select["scores"] = rng.standard_normal(len(features))
    if how.get("tokens"):
        select.update(unit="tokens", budget=int(budget * features.token_costs.mean()))
    selector = get_selector(registry, **kwargs)
    if how.get("filter"):
        selector = Filtered(selector, rng.standard_normal(len(features)), 0.25)
    base = _status("VmRSS")  # imports (torch) are resident already: what the selection adds is measured
    Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the peak (VmHWM) from the current RSS
    t0 = time.perf_counter()
    selector.select(features, **select)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rss": _status("VmHWM") - base, "seconds": seconds}))


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def run_child(name: str, pool: Path, budget: int, timeout: float) -> dict | str:
    """One selector in its own process (its peak is its own): its JSON line, or why it has none."""
    cmd = [sys.executable, __file__, "--child", name, "--dir", str(pool), "--budget", str(budget)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"ran past --timeout {timeout:.0f} s"
    if proc.returncode != 0:
        return f"failed (exit {proc.returncode}): {' '.join(proc.stderr.split()[-40:])}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(rows: dict[str, dict | str], size: int, limit: float) -> list[str]:
    """Print the table; return the selectors that fail the bound (or did not finish)."""
    ref = rows["fishersft"]["rss"] if isinstance(rows.get("fishersft"), dict) else None
    print(f"{'selector':<19} {'added RSS GiB':>13} {'RSS/file':>9} {'RSS/fishersft':>14} {'seconds':>8}")
    bad = []
    for name, r in rows.items():
        if not isinstance(r, dict):
            print(f"{name:<19} {r}")
            bad.append(name)
            continue
        ratio = r["rss"] / ref if ref else float("nan")
        over = not ratio <= limit
        bad += [name] if over else []
        print(f"{name:<19} {r['rss'] / 2**30:>13.3f} {r['rss'] / size:>9.2f} {ratio:>14.2f} "
              f"{r['seconds']:>8.1f}{f'  > {limit}x' if over else ''}")  # fmt: skip
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the token rows (float16) in GiB")
    parser.add_argument("--tokens", type=int, default=128, help="mean tokens per sentence")
    parser.add_argument("--dim", type=int, default=576, help="embedding width (SmolLM2-135M: 576)")
    parser.add_argument("--budget", type=int, default=20, help="examples to select (token rows: x mean cost)")
    parser.add_argument("--dir", type=Path, default=None, help="where the pool is written (default: a temp dir)")
    parser.add_argument("--selectors", nargs="+", default=list(SELECTORS), choices=list(SELECTORS))
    parser.add_argument("--limit", type=float, default=1.5, help="most added RSS allowed, x plain FisherSFT's")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds each selector may run")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write the report to this file (results/bench/)")
    args = parser.parse_args()
    record_to(None if args.child else args.out)  # a child's output is its parent's to report
    if args.child:
        child(args.child, args.dir, args.budget)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        pool = Path(tmp) / "pool"
        size = write_pool(pool, args.gib, args.tokens, args.dim)
        n = len(np.load(pool / "offsets.npy")) - 1
        print(f"pool: {size / 2**30:.2f} GiB on disk, {n} sentences of {args.tokens} tokens on average x {args.dim} "
              f"(float16), budget {args.budget}")  # fmt: skip
        rows = {}
        for name in ["fishersft", *[s for s in args.selectors if s != "fishersft"]]:
            rows[name] = run_child(name, pool, args.budget, args.timeout)
            print(f"  {name}: {'done' if isinstance(rows[name], dict) else rows[name]}", flush=True)
    bad = report(rows, size, args.limit)
    if bad:
        print(f"over {args.limit}x plain FisherSFT's peak, failed or too slow: {', '.join(bad)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
