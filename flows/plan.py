"""An evidence run as a plan: the stage commands DVC resolves from dvc.yaml, written here, run where DVC is not.

A lent GPU machine, a cluster node or a container may hold torch and transformers but not DVC (nor MLflow or
Prefect). There, `plan run` executes the stages that `python -m flows.evidence` would have DVC run, in DVC's
order and with the same params:

    python -m flows.plan export --pool contaminated --profile gpu --out plan.json   # here, with DVC
    python -m flows.plan run plan.json                                              # there, without it

`export` takes params.evidence.yaml's overrides for the pool and profile (as flows/evidence.py does; `--set
key=value` adds more), resolves dvc.yaml's stages (foreach items, ${...}) with DVC's own resolver in a scratch copy,
and writes the whole params and two phases: the sweep's stages, then compare's with the learning rate frozen at
the sweep's choice (results/sweep/sweep.json), as the evidence flow freezes it. A profile that sets the rate
itself has only the second phase.

`run` writes params.yaml from the plan (run it in a checkout whose params.yaml may be overwritten), runs each
stage's command in DVC's order (``--jobs N``: up to N at once, each once the stages it reads from are done), each
in a process group of its own (SIGTERM or Ctrl-C stops them all, exit 143 / 130), starts nothing new after the
first failure, and marks each finished stage under .cache/plan/<plan hash>/:
a rerun, or a second call on the same machine, resumes at the first unfinished stage. Stages write atomically, so
a stage stopped half-way left nothing that counts. At the end the evidence is collected as flows/evidence.py
collects it (results/evidence/<pool>[-<profile>]/, or --collect DIR).

DVC's content cache is not reproduced: each stage runs once per plan and nothing is tracked. Bring the collected
files back and commit them, or rerun under DVC to cache the outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from flows import evidence, supervise
from stages._common import with_overrides

ROOT = evidence.ROOT
SWEEP_CHOICE = ("results/sweep/sweep.json", "chosen_learning_rate")
_PRINT = threading.Lock()  # stages run in threads: one line at a time, never two run together


def say(line: str) -> None:
    with _PRINT:
        print(line, flush=True)


def resolve(target: str, params: dict, dvc_yaml: Path) -> list[dict]:
    """[{name, cmd, after}] of ``target`` and every stage it depends on, dependencies first (ties by name), as DVC
    resolves dvc.yaml under ``params`` (in a scratch copy: the workspace's params.yaml is not touched); ``after``:
    the stages whose outputs it reads."""
    import contextlib
    import logging

    import networkx as nx
    from dvc.repo import Repo

    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # DVC resolves targets from the cwd
        shutil.copy(dvc_yaml, "dvc.yaml")
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        init_log = logging.getLogger("dvc.repo.init")  # "Initialized DVC repository." is not this run's news
        level, init_log.level = init_log.level, logging.WARNING
        try:
            Repo.init(".", no_scm=True)
        finally:
            init_log.setLevel(level)
        with Repo(".") as repo:
            graph = repo.index.graph.subgraph(repo.stage.collect(target, with_deps=True))  # edge: stage -> its dep
            order = nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: s.addressing)
            return [
                {"name": s.addressing, "cmd": s.cmd, "after": sorted(d.addressing for d in graph.successors(s))}
                for s in order
            ]


def export(pool: str, profile_name: str | None, extra: dict, root: Path = ROOT) -> dict:
    """The plan of one pool's evidence run: params, then the sweep phase (unless the rate is set) and compare's."""
    profile = yaml.safe_load((root / evidence.PROFILE.name).read_text())
    flat = {**evidence.overrides(profile, pool, profile_name), **extra}
    evidence.check_keys_exist(flat, root / "params.yaml")
    params = with_overrides(yaml.safe_load((root / "params.yaml").read_text()), flat)
    phases = []
    if evidence.LR_KEY not in flat:
        phases.append({"target": "sweep", "stages": resolve("sweep", params, root / "dvc.yaml")})
    compare = {"target": "compare", "stages": resolve("compare", params, root / "dvc.yaml")}
    if phases:
        compare["freeze"] = {"key": evidence.LR_KEY, "file": SWEEP_CHOICE[0], "field": SWEEP_CHOICE[1]}
    return {"pool": pool, "profile": profile_name, "overrides": flat, "params": params, "phases": [*phases, compare]}


def command(cmd: str) -> list[str]:
    """A stage's command as argv, `python` being this interpreter (a machine may have only `python3`)."""
    import shlex

    argv = shlex.split(cmd)
    return [sys.executable, *argv[1:]] if argv and argv[0] in ("python", "python3") else argv


def write_params(params: dict, root: Path) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(stage: dict, root: Path, prefix: str) -> int:
    """One stage's command in a process group of its own, its lines printed (after ``prefix``); its exit code."""
    say(f"plan: {stage['name']}: $ {stage['cmd']}")
    code, _ = supervise.stream(command(stage["cmd"]), root, dict(os.environ), lambda s: say(prefix + s))
    return code


def run_phase(stages: list[dict], marks: Path, root: Path, jobs: int) -> None:
    """Run the stages not marked done, each once its ``after`` stages are, up to ``jobs`` at a time; at the first
    failure nothing new starts, the running ones finish, and the failure is one error line."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    def mark(stage: dict) -> Path:
        return marks / stage["name"].replace("/", "_")

    finished = {s["name"] for s in stages if mark(s).exists()}
    for name in sorted(finished):
        say(f"plan: {name}: done before")
    todo, running, failed = [s for s in stages if s["name"] not in finished], {}, []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while (todo and not failed) or running:
                ready = [s for s in todo if set(s["after"]) <= finished] if not failed else []
                for stage in ready[: jobs - len(running)]:
                    todo.remove(stage)
                    prefix = f"[{stage['name']}] " if jobs > 1 else ""
                    running[pool.submit(run_stage, stage, root, prefix)] = stage
                if not running:
                    waiting = ", ".join(s["name"] for s in todo)
                    raise SystemExit(f"error: plan: {waiting} wait on stages the plan does not hold")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    stage, code = running.pop(future), future.result()
                    if code == 0:
                        mark(stage).touch()
                        finished.add(stage["name"])
                    else:
                        failed.append((stage["name"], supervise.classify_stage(code).why))
        except BaseException:
            supervise.stop_all()  # a stop: every running stage's group, not only the one the signal found
            raise
    if failed:
        name, why = failed[0]
        raise SystemExit(f"error: plan stage {name} failed: {why}; rerun the plan to resume there")


def run(plan_path: Path, collect_dir: Path | None = None, root: Path = ROOT, jobs: int = 1) -> float:
    """Run every stage of the plan not yet marked done, then collect the evidence; the wall time in seconds."""
    text = plan_path.read_bytes()
    plan = json.loads(text)
    marks = root / ".cache" / "plan" / hashlib.sha256(text).hexdigest()[:16]
    marks.mkdir(parents=True, exist_ok=True)
    params, t0 = plan["params"], time.perf_counter()
    write_params(params, root)
    for phase in plan["phases"]:
        if freeze := phase.get("freeze"):
            value = json.loads((root / freeze["file"]).read_text())[freeze["field"]]
            params = with_overrides(params, {freeze["key"]: value})
            write_params(params, root)
            print(f"plan: {freeze['key']} = {value:g} ({freeze['file']}), frozen for every selector", flush=True)
        run_phase(phase["stages"], marks, root, jobs)
    seconds = time.perf_counter() - t0
    dest = collect_dir or evidence.result_dir(plan["pool"], plan["profile"])
    swept = any(p["target"] == "sweep" for p in plan["phases"])
    evidence.collect(dest, swept, seconds, {"pool": plan["pool"], "profile": plan["profile"]},
                     ["python", "-m", "flows.plan", "run", plan_path.name], root)  # fmt: skip
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    ex = verbs.add_parser("export", help="resolve one pool's evidence run into a plan (needs DVC)")
    ex.add_argument("--pool", required=True)
    ex.add_argument("--profile", default=None)
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override (YAML value)")
    ex.add_argument("--out", type=Path, required=True)
    rn = verbs.add_parser("run", help="run a plan's stages in this checkout (no DVC needed)")
    rn.add_argument("plan", type=Path)
    rn.add_argument("--collect", type=Path, default=None, help="where the evidence goes (default results/evidence/)")
    rn.add_argument("--jobs", type=int, default=1, help="stages at once (their inputs ready); one GPU can hold several")
    args = parser.parse_args(argv)
    if args.verb == "export":
        extra = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE")
            extra[key] = yaml.safe_load(value)
        from flows.preflight import check_config_or_exit

        plan = export(args.pool, args.profile, extra)
        check_config_or_exit(["sweep", "compare"], plan["overrides"])
        args.out.write_text(json.dumps(plan, indent=1) + "\n")
        n = sum(len(p["stages"]) for p in plan["phases"])
        print(f"plan: {args.pool}{'-' + args.profile if args.profile else ''}: {n} stage runs -> {args.out}")
        return 0
    if not args.plan.is_file():
        raise SystemExit(f"error: {args.plan}: no such plan file")
    try:
        with supervise.handling_signals(supervise.policy(ROOT).stop_grace_s):
            seconds = run(args.plan, args.collect, jobs=max(1, args.jobs))
    except supervise.Stopped as e:
        print(f"plan: {e}; the next run resumes at the first unfinished stage", file=sys.stderr)
        return e.code
    print(f"plan: finished in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
