"""The evidence run: the pipeline under the evidence profile, once per pool, as DVC experiments.

    python -m flows.evidence                       # both pools (clean, contaminated), CPU profile
    python -m flows.evidence --pools clean         # one pool
    python -m flows.evidence --profile gpu         # the larger GPU profile on top
    python -m flows.evidence --pools contaminated --profile steps   # equal examples instead of equal tokens

Each pool is two DVC experiments with params.evidence.yaml's overrides (shared ones plus the pool's own):
first `dvc exp run sweep`, the learning rate chosen on random selections and the validation split
(stages/sweep.py), then `dvc exp run compare` with that rate frozen for every selector
(finetune.train.learning_rate). DVC caches every stage by content: a killed run resumes from the last
finished stage (the sweep from its last finished trial), and the two pools share nothing but the download
of the source files. After each pool the evidence (results/compare/evidence.md, evidence.csv,
nll_vs_tokens.png, table.md) and the sweep (sweep.json, sweep.csv, sweep.png) are copied to
results/evidence/<pool>[-<profile>]/ and the wall time is recorded; `dvc exp show` lists the experiments.
The workspace is left at the last experiment; `git checkout params.yaml && dvc checkout` goes back.
A failure that may heal (a kill, out of memory, network) is retried as params.yaml `flow` says, resuming
from the last finished stage; a stage's own `error:` is not. SIGTERM or Ctrl-C stops DVC and the stage
under it (their whole process group) and exits 143 / 130; the next run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from flows import supervise
from flows.preflight import check_config_or_exit
from infosift.atomic import atomic_output
from infosift.errors import UnsafeNameError
from infosift.names import check_name
from stages._common import StageError

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "params.evidence.yaml"
OUT = ROOT / "results" / "evidence"
COPIED = ("evidence.md", "evidence.csv", "nll_vs_tokens.png", "table.md")
SWEPT = ("sweep.json", "sweep.csv", "sweep.png")
LR_KEY = "finetune.train.learning_rate"
PASS_THROUGH = "finetune.train."  # any TrainingArguments name (checked by preflight), present in params.yaml or not


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


def check_keys_exist(flat: dict, params_yaml: Path | None = None) -> None:
    """Every override but a trainer argument names a key params.yaml has: `dvc exp run -S` sets only existing keys,
    and its refusal would not say which file or key. A typo stops the run here, as one line."""
    tree = yaml.safe_load((params_yaml or ROOT / "params.yaml").read_text()) or {}
    for key in (k for k in flat if not k.startswith(PASS_THROUGH)):
        node = tree
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise SystemExit(f"error: {PROFILE.name}: {key} is not a param of params.yaml (a typo, or a new key)")
            node = node[part]


def result_dir(pool: str, name: str | None = None) -> Path:
    """Where one pool's evidence is kept: results/evidence/<pool>, or <pool>-<profile> under a profile."""
    return OUT / (pool if name is None else f"{pool}-{name}")


def set_args(flat: dict) -> list[str]:
    """`-S key=value` arguments; values in YAML flow style so lists and nulls survive. A trainer argument that
    params.yaml does not list (finetune.train passes any through) is set with Hydra's `++` (add or override);
    every other key must exist, so DVC refuses a typo."""
    args = []
    for key, value in flat.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-S", f"{'++' if key.startswith(PASS_THROUGH) else ''}{key}={text}"]
    return args


def exp_run(target: str, dest: Path, flat: dict, what: str) -> None:
    """`dvc exp run TARGET` with the overrides ``flat``, retried while its failure may heal."""
    cmd = ["dvc", "exp", "run", target, "--name", f"evidence-{dest.name}-{target}-{time.strftime('%Y%m%d-%H%M%S')}"]
    cmd += set_args(flat)
    print("$ " + " ".join(cmd), flush=True)
    run_retrying(cmd, what, supervise.policy(ROOT))


def run_pool(profile: dict, pool: str, name: str | None = None) -> float:
    """Sweep the learning rate, run one pool's experiment at it to the end and collect its evidence; return the
    wall time in seconds. A learning rate given in the overrides skips the sweep (it was chosen elsewhere)."""
    dest = result_dir(pool, name)
    flat = overrides(profile, pool, name)
    sweep = LR_KEY not in flat
    t0 = time.perf_counter()
    if sweep:
        exp_run("sweep", dest, flat, f"the {pool} pool's learning-rate sweep")
        chosen = json.loads((ROOT / "results/sweep/sweep.json").read_text())["chosen_learning_rate"]
        print(f"evidence: {pool} pool: learning rate {chosen:g} (results/sweep/sweep.png), frozen for every "
              "selector", flush=True)  # fmt: skip
        flat = {**flat, LR_KEY: chosen}
    exp_run("compare", dest, flat, f"the {pool} pool's experiment")
    seconds = time.perf_counter() - t0
    collect(dest, sweep, seconds, {"pool": pool, "profile": name},
            ["dvc", "exp", "run", "compare", *set_args(flat)])  # fmt: skip
    return seconds


def collect(dest: Path, swept: bool, seconds: float, run: dict, command: list[str], root: Path | None = None) -> None:
    """Copy the evidence (and, when ``swept``, the sweep) of a finished run from ``root``'s results into ``dest``,
    with run.json (``run`` plus the wall time and the command): the whole directory replaced, so no file of an
    older run is left beside the new ones."""
    root = root or ROOT  # read at the call (tests point ROOT at a scratch workspace)
    copied = [("compare", f) for f in COPIED] + [("sweep", f) for f in SWEPT if swept]
    with atomic_output(dest) as tmp:
        tmp.mkdir()
        for folder, f in copied:
            if (root / "results" / folder / f).exists():
                shutil.copy(root / "results" / folder / f, tmp / f)
        record = {**run, "wall_seconds": round(seconds, 1), "command": command}
        (tmp / "run.json").write_text(json.dumps(record, indent=1) + "\n")


def run_retrying(cmd: list[str], what: str, policy: supervise.Policy) -> None:
    """Run ``cmd`` in its own process group, its output passed through; rerun it while its failure may heal.

    DVC resumes from the last finished stage, so a retry repeats only the stage that failed.
    """
    for attempt in range(policy.retries + 1):
        code, tail = supervise.stream(cmd, ROOT, dict(os.environ), lambda line: print(line, flush=True))
        if code == 0:
            return
        failure = supervise.classify(code, tail)
        if not failure.transient or attempt == policy.retries:
            tried = f" ({attempt + 1} attempts)" if attempt else ""
            raise SystemExit(f"error: {what} failed{tried}: {failure.why} (the dvc output is above); rerun to resume")
        print(f"evidence: {what} failed: {failure.why}; may heal, retry {attempt + 1} of {policy.retries} in "
              f"{policy.retry_delay_s:g} s (params.yaml flow.retries)", flush=True)  # fmt: skip
        time.sleep(policy.retry_delay_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", nargs="+", default=["clean", "contaminated"])
    parser.add_argument("--profile", default=None, help=f"a block under `profiles` in {PROFILE.name} (gpu, steps)")
    args = parser.parse_args(argv)
    profile = yaml.safe_load(PROFILE.read_text())
    for pool in args.pools:  # names, params, inputs: first
        flat = overrides(profile, pool, args.profile)
        check_keys_exist(flat)
        check_config_or_exit(["sweep", "compare"], flat)
    try:
        policy = supervise.policy(ROOT)
    except StageError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        with supervise.handling_signals(policy.stop_grace_s):
            for pool in args.pools:
                seconds = run_pool(profile, pool, args.profile)
                out = result_dir(pool, args.profile)
                print(f"evidence: {pool} pool finished in {seconds / 60:.1f} min -> {out}/evidence.md", flush=True)
    except supervise.Stopped as e:
        print(f"evidence: {e}; the next run resumes from the last finished stage", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
