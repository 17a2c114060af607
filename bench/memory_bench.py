"""Peak memory of each selector on a memory-mapped pool, against the pool's size on disk and plain FisherSFT.

A synthetic float16 pool (N sentences x ``--tokens`` tokens x ``--dim``, about ``--gib`` GiB of token rows,
written chunk-wise so the writer never holds it) is selected from by each selector in its own subprocess; the
peak RSS it reports counts the mapped pages it touched, so reading the whole file once costs about its size.
Printed per selector: the peak RSS its selection added over what the process held before (imports excluded;
Linux: the peak is restarted through /proc/self/clear_refs), that / file size, and that / plain FisherSFT's
(the target: at most 1.5).

    python bench/memory_bench.py              # 2 GiB of token rows (needs ~2.2 GiB of disk and time)
    python bench/memory_bench.py --gib 0.1    # a quick check of the same ratios
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SELECTORS = {  # name -> (registry name, constructor arguments, select keywords)
    "random": ("random", {}, {}),
    "fishersft": ("fishersft", {"ridge": 1.0}, {}),
    "fishersft-err": ("fishersft", {"ridge": 1.0, "weighting": "error"}, {}),
    "fishersft-len": ("fishersft", {"ridge": 1.0, "weighting": "length"}, {}),
    "sentence_od": ("sentence_od", {"ridge": 1.0}, {}),
    "density": ("density", {}, {}),
    "gip-target": ("gip", {"ridge": 1.0}, {"targets": True}),
}


def write_pool(out: Path, gib: float, tokens: int, dim: int, seed: int = 0, chunk: int = 4096) -> int:
    """values.npy (float16), offsets.npy, ids.json, p_next.npy, p_sqnorm.npy under ``out``; returns its bytes."""
    from infosift.features import IDS, OFFSETS, P_NEXT, P_SQNORM, VALUES

    n = max(2, int(gib * 2**30 / (tokens * dim * 2)))
    total = n * tokens
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    values = np.lib.format.open_memmap(out / VALUES, mode="w+", dtype=np.float16, shape=(total, dim))
    p_next = np.lib.format.open_memmap(out / P_NEXT, mode="w+", dtype=np.float32, shape=(total,))
    p_sq = np.lib.format.open_memmap(out / P_SQNORM, mode="w+", dtype=np.float32, shape=(total,))
    scale = (1.0 + np.arange(dim)) ** -0.5
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        topic = rng.standard_normal((e - s, 1, dim))
        x = (0.8 * topic + rng.standard_normal((e - s, tokens, dim))) * scale
        values[s * tokens : e * tokens] = x.reshape(-1, dim).astype(np.float16)
        p = rng.uniform(0, 1, (e - s) * tokens).astype(np.float32)
        p_next[s * tokens : e * tokens], p_sq[s * tokens : e * tokens] = p, p * p + 0.05
    for a in (values, p_next, p_sq):
        a.flush()
    del values, p_next, p_sq
    np.save(out / OFFSETS, np.arange(n + 1, dtype=np.int64) * tokens)
    (out / IDS).write_text(json.dumps([f"s{i}" for i in range(n)]))
    return sum(f.stat().st_size for f in out.iterdir())


def child(name: str, pool: Path, budget: int) -> None:
    """One selector on the mapped pool; prints {"rss": peak bytes, "seconds": ...} as JSON."""
    from infosift.features import TokenFeatures
    from infosift.select import get_selector

    registry, kwargs, extra = SELECTORS[name]
    features = TokenFeatures.load(pool, mmap=True)
    select = {"targets": features.subset(np.arange(min(50, len(features))))} if extra.get("targets") else {}
    selector = get_selector(registry, **kwargs)
    base = _status("VmRSS")  # imports (torch) are resident already: what the selection adds is measured
    Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the peak (VmHWM) from the current RSS
    t0 = time.perf_counter()
    selector.select(features, budget=budget, seed=0, **select)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rss": _status("VmHWM") - base, "seconds": seconds}))


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the token rows (float16) in GiB")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sentence")
    parser.add_argument("--dim", type=int, default=576, help="embedding width (SmolLM2-135M: 576)")
    parser.add_argument("--budget", type=int, default=20, help="examples to select")
    parser.add_argument("--dir", type=Path, default=None, help="where the pool is written (default: a temp dir)")
    parser.add_argument("--selectors", nargs="+", default=list(SELECTORS), choices=list(SELECTORS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir, args.budget)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        pool = Path(tmp) / "pool"
        size = write_pool(pool, args.gib, args.tokens, args.dim)
        print(f"pool: {size / 2**30:.2f} GiB on disk ({args.tokens} tokens x {args.dim} per sentence, float16)")
        rows = {}
        for name in ["fishersft", *[s for s in args.selectors if s != "fishersft"]]:
            cmd = [sys.executable, __file__, "--child", name, "--dir", str(pool), "--budget", str(args.budget)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name}: failed\n{proc.stderr[-2000:]}")
                continue
            rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        ref = rows["fishersft"]["rss"]
        print(f"{'selector':<15} {'added RSS GiB':>13} {'RSS/file':>9} {'RSS/fishersft':>14} {'seconds':>8}")
        for name, r in rows.items():
            flag = "" if r["rss"] <= 1.5 * ref else "  > 1.5x"
            print(f"{name:<15} {r['rss'] / 2**30:>13.3f} {r['rss'] / size:>9.2f} {r['rss'] / ref:>14.2f} "
                  f"{r['seconds']:>8.1f}{flag}")  # fmt: skip


if __name__ == "__main__":
    main()
