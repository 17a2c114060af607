"""The evidence run: the pipeline under the evidence profile, once per pool, as DVC experiments.

    python -m flows.evidence                       # both pools (clean, contaminated), CPU profile
    python -m flows.evidence --pools clean         # one pool
    python -m flows.evidence --profile gpu         # the larger GPU profile on top
    python -m flows.evidence --pools contaminated --profile steps   # equal examples instead of equal tokens

Each pool is one `dvc exp run compare -S key=value ...` (params.evidence.yaml: shared overrides plus the
pool's own), so DVC caches every stage by content: a killed run resumes from the last finished stage,
and the two pools share nothing but the download of the source files. After each pool the evidence
(results/compare/evidence.md, evidence.csv, nll_vs_tokens.png, table.md) is copied to
results/evidence/<pool>[-<profile>]/ and the wall time is recorded; `dvc exp show` lists the experiments.
The workspace is left at the last experiment; `git checkout params.yaml && dvc checkout` goes back.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from infosift.atomic import atomic_output
from infosift.errors import UnsafeNameError
from infosift.names import check_name

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "params.evidence.yaml"
OUT = ROOT / "results" / "evidence"
COPIED = ("evidence.md", "evidence.csv", "nll_vs_tokens.png", "table.md")


def overrides(profile: dict, pool: str, name: str | None = None) -> dict:
    """The flat key -> value overrides for one pool: shared ones, then the pool's, then profile ``name``'s."""
    pools, profiles = profile.get("pools") or {}, profile.get("profiles") or {}
    try:  # each becomes a directory under results/evidence/ and part of an experiment's name
        check_name(pool, f"{PROFILE.name} pool")
        if name is not None:
            check_name(name, f"{PROFILE.name} profile")
    except UnsafeNameError as e:
        raise SystemExit(f"error: {e}") from None
    if pool not in pools:
        raise SystemExit(f"error: {PROFILE.name}: unknown pool {pool!r}; known: {sorted(pools)}")
    if name is not None and name not in profiles:
        raise SystemExit(f"error: {PROFILE.name}: unknown profile {name!r}; known: {sorted(profiles)}")
    flat = dict(profile.get("overrides") or {})
    flat.update(pools[pool] or {})
    if name is not None:
        flat.update(profiles[name] or {})
    return flat


def result_dir(pool: str, name: str | None = None) -> Path:
    """Where one pool's evidence is kept: results/evidence/<pool>, or <pool>-<profile> under a profile."""
    return OUT / (pool if name is None else f"{pool}-{name}")


def set_args(flat: dict) -> list[str]:
    """`-S key=value` arguments; values in YAML flow style so lists and nulls survive."""
    args = []
    for key, value in flat.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args


def run_pool(profile: dict, pool: str, name: str | None = None) -> float:
    """Run one pool's experiment to the end and collect its evidence; return the wall time in seconds."""
    dest = result_dir(pool, name)
    cmd = ["dvc", "exp", "run", "compare", "--name", f"evidence-{dest.name}-{time.strftime('%Y%m%d-%H%M%S')}"]
    cmd += set_args(overrides(profile, pool, name))
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise SystemExit(f"error: the {pool} pool's experiment failed (see the dvc output above); rerun to resume")
    seconds = time.perf_counter() - t0
    with atomic_output(dest) as tmp:  # the whole directory replaced: no file of an older run left beside new ones
        tmp.mkdir()
        for f in COPIED:
            if (ROOT / "results/compare" / f).exists():
                shutil.copy(ROOT / "results/compare" / f, tmp / f)
        (tmp / "run.json").write_text(
            json.dumps({"pool": pool, "profile": name, "wall_seconds": round(seconds, 1), "command": cmd}, indent=1)
            + "\n"
        )
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", nargs="+", default=["clean", "contaminated"])
    parser.add_argument("--profile", default=None, help=f"a block under `profiles` in {PROFILE.name} (gpu, steps)")
    args = parser.parse_args(argv)
    profile = yaml.safe_load(PROFILE.read_text())
    for pool in args.pools:
        overrides(profile, pool, args.profile)  # every name checked before the first hour-long run starts
    for pool in args.pools:
        seconds = run_pool(profile, pool, args.profile)
        out = result_dir(pool, args.profile)
        print(f"evidence: {pool} pool finished in {seconds / 60:.1f} min -> {out}/evidence.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
