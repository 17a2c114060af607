"""Variants in parallel: the out-of-date items of a matrix stage run at once as Ray tasks, then DVC records them.

One workspace holds one DVC lock, so `dvc repro` runs one stage at a time. Here each out-of-date item of a
matrix stage (per `dvc status`) runs its command exactly as DVC resolves it from dvc.yaml, as a Prefect task on
`RayTaskRunner` in the shared workspace; when all are done, `dvc commit -f <items>` (DVC's way to record the
outputs of a command run outside `dvc repro`) hashes their deps and outs into dvc.lock and the cache, serially.
Afterwards `dvc status` is clean and `dvc repro` reruns nothing. Every Ray node must see the workspace at the
same path (one machine, or a shared filesystem) and reach the Prefect API.

Imported only when the flow gets a Ray address: Ray and prefect-ray are an optional extra.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from flows import supervise
from flows._dvc import ROOT, FlowError, failed, heals, stream

CODE = Path(__file__).resolve().parent.parent  # where `flows` imports from, for the Ray workers
# the matrix stages that fan out: each item fine-tunes or evaluates one variant (a test checks them in dvc.yaml)
PARALLEL_STAGES = ("finetune", "evaluate")


def matrix_items(group: str, root: Path | None = None) -> list[dict]:
    """Each item of a stage group as DVC resolves it: name (`group@key`), cmd, wdir and the outs DVC replaces."""
    from dvc.repo import Repo

    root = Path(root or ROOT)
    with Repo(str(root)) as repo:
        stages = repo.stage.collect(f"{root / 'dvc.yaml'}:{group}")  # a bare name would resolve against the cwd
        return [
            {
                "name": s.name,  # `group@key`; addressing would carry a path relative to the cwd
                "cmd": s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd),
                "wdir": str(s.wdir),
                "outs": [o.fs_path for o in s.outs if not o.persist],
            }
            for s in stages
        ]


def stale_items(group: str, root: Path | None = None) -> set[str]:
    """Names of the group's items that `dvc status` finds out of date (changed deps, outs, params or command)."""
    proc = subprocess.run(["dvc", "status", "--json", group], cwd=root or ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FlowError(f"dvc status {group} failed: {last}")
    return set(json.loads(proc.stdout or "{}"))


def _remove_outs(paths: list[str]) -> None:
    """Delete an item's previous outputs before it runs, as `dvc repro` does, so nothing stale is committed."""
    for p in map(Path, paths):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


@task(cache_policy=NONE, task_run_name="{name}")
def run_item(name: str, cmd: str, wdir: str, pipeline_run: str, grace_s: float, record: str) -> dict:
    """Run one item's command on whichever Ray worker got it; return when and where it ran.

    The command runs in a process group of its own, recorded under ``record`` (a folder in the workspace) while
    it runs: a cancelled task (a stopped run) ends the whole group after ``grace_s`` (params.yaml
    flow.stop_grace_s), and the driver can end it itself where the worker cannot. A failure raises StageFailed,
    which the task's retries (`item_task`) repeat only when it may heal.
    """
    host = socket.gethostname()
    if not Path(wdir).is_dir():
        raise FlowError(f"workspace {wdir} not found on Ray node {host}; every node must mount it at the same path")
    supervise.set_grace(grace_s)
    get_run_logger().info("$ %s  (on %s, pid %d)", cmd, host, os.getpid())
    start = time.time()
    env = {**os.environ, "INFOSIFT_PIPELINE_RUN": pipeline_run}
    code, _ = stream(cmd, Path(wdir), env, prefix=f"[{name}] ", record=Path(record))
    end = time.time()
    if code != 0:  # its output is in the task's log
        raise failed(name, code, supervise.classify_stage(code))
    return {"name": name, "start": start, "end": end, "host": host}


def item_task(policy: supervise.Policy):
    """`run_item` retried as a serial stage is (params.yaml flow): a failure that may heal (a kill, out of memory,
    EXIT_TRANSIENT) up to ``policy.retries`` times, ``policy.retry_delay_s`` apart; a stage's own error never."""
    return run_item.with_options(
        retries=policy.retries, retry_delay_seconds=policy.retry_delay_s, retry_condition_fn=heals
    )


def record_dir(root: Path | None = None) -> Path:
    """Where this process's items record their process groups (under .dvc/tmp: in every DVC workspace, ignored)."""
    return Path(root or ROOT) / ".dvc" / "tmp" / "infosift-groups" / f"{socket.gethostname()}-{os.getpid()}"


@task(cache_policy=NONE, task_run_name="dvc commit {group}")
def dvc_commit(group: str, items: list[dict], root: Path | None = None) -> None:
    """Record the items' deps and outs in dvc.lock and the cache: one DVC process, so one lock, serially."""
    missing = [p for item in items for p in item["outs"] if not os.path.lexists(p)]
    if missing:
        raise FlowError(
            f"{group}: {missing[0]} was not written to this workspace; every Ray node must mount it at the same path"
        )
    cmd = ["dvc", "commit", "--force", *(item["name"] for item in items)]
    get_run_logger().info("$ %s", " ".join(cmd))
    if (code := stream(cmd, root or ROOT, dict(os.environ))[0]) != 0:
        raise FlowError(f"dvc commit of {group} failed with exit code {code}")


@flow(name="infosift-parallel", flow_run_name="{group}", log_prints=True)
def ray_items(
    group: str,
    items: list[dict],
    pipeline_run: str,
    cpus: float,
    gpus: float,
    env: dict,
    policy: supervise.Policy,
    record: str,
) -> list:
    """Submit every item as a Ray task and wait for all; a failed item is returned as its exception."""
    from prefect_ray.context import remote_options

    supervise.take_signals()  # this subflow's engine put Prefect's SIGTERM handler in place again
    run = item_task(policy)
    with remote_options(num_cpus=cpus, num_gpus=gpus, runtime_env={"env_vars": env}):
        futures = [run.submit(i["name"], i["cmd"], i["wdir"], pipeline_run, policy.stop_grace_s, record) for i in items]
    try:
        return [f.result(raise_on_failure=False) for f in futures]
    except BaseException:  # a stop: cancel the items still running; each ends its command's process group
        _cancel(futures, Path(record))
        raise


def _cancel(futures: list, record: Path) -> None:
    """Cancel the Ray tasks behind ``futures`` (a KeyboardInterrupt in each worker, which ends its item's group
    with the grace); wait for them that grace, then SIGKILL what is left of the groups recorded on this host
    (a worker blocked where a cancel cannot reach it, or already gone)."""
    import ray

    refs = [f.wrapped_future for f in futures if getattr(f, "wrapped_future", None) is not None]
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # already finished, or the cluster is going away
            pass
    try:
        ray.wait(refs, num_returns=len(refs), timeout=supervise.grace_s() + 2)
    except Exception:
        pass
    finally:
        supervise.stop_recorded(record, signal.SIGKILL, grace_s=0)


def _api_url() -> str:
    """The Prefect API this flow run talks to (also the temporary one), for the Ray workers to report to."""
    from prefect.context import get_run_context

    return str(get_run_context().client.api_url)


def run_on_ray(
    group: str,
    items: list[dict],
    address: str,
    cpus: float,
    gpus: float,
    env: dict[str, str] | None = None,
    policy: supervise.Policy | None = None,
    root: Path | None = None,
) -> list:
    """The items as concurrent Ray tasks (a subflow on RayTaskRunner); per item its report or its exception.

    ``env``: what the workers need of this shell to track and judge (MLflow's variables, the judge key's);
    ``policy``: retries and the stop's grace (params.yaml flow); ``root``: the workspace."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_ray import RayTaskRunner

    api = _api_url()
    # Ray workers rebuild Prefect's settings from this context: without a URL each would start its own API.
    env = {
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(CODE), os.environ.get("PYTHONPATH", "")) if p),
        **(env or {}),  # MLflow's and the judge key's variables: workers do not share this shell
    }
    policy = policy or supervise.policy(Path(root or ROOT))
    try:
        with temporary_settings({PREFECT_API_URL: api}), supervise.recording(record_dir(root)) as record:
            return ray_items.with_options(task_runner=RayTaskRunner(address=address))(
                group, items, str(flow_run.get_id() or ""), cpus, gpus, env, policy, str(record)
            )
    except ConnectionError as e:
        raise FlowError(f"cannot reach Ray at {address}: {' '.join(str(e).split())}") from None


def fan_out(
    group: str,
    address: str,
    force: bool = False,
    cpus: float = 1,
    gpus: float = 0,
    root: Path | None = None,
    env: dict[str, str] | None = None,
    policy: supervise.Policy | None = None,
) -> list[dict]:
    """Run the group's out-of-date items concurrently on Ray, then commit the finished ones to dvc.lock.

    ``root``: the workspace (the pipeline's); ``env``: what the Ray workers need of this shell (pipeline.cluster_env);
    ``policy``: the retries of an item whose failure may heal and a stop's grace (params.yaml flow).

    Returns what each item reported (name, start, end, host). Items that failed are not committed (DVC keeps
    them out of date for the next run); the run then ends with one error naming them.
    """
    logger = get_run_logger()
    items = matrix_items(group, root)
    todo = items if force else [i for i in items if i["name"] in stale_items(group, root)]
    logger.info("%s: %d of %d items out of date%s", group, len(todo), len(items), "" if todo else "; nothing to run")
    if not todo:
        return []
    for item in todo:
        _remove_outs(item["outs"])
    results = run_on_ray(group, todo, address, cpus, gpus, env, policy, root)
    done = [item for item, r in zip(todo, results, strict=True) if isinstance(r, dict)]
    failed = [(item["name"], r) for item, r in zip(todo, results, strict=True) if not isinstance(r, dict)]
    for r in results:
        if isinstance(r, dict):
            logger.info("%s ran on %s in %.1f s", r["name"], r["host"], r["end"] - r["start"])
    if done:
        dvc_commit(group, done, root)
    if failed:
        name, err = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        text = " ".join(str(err).split())
        raise FlowError(f"{text if text.startswith(name) else f'{name}: {text}'}{more}")
    return [r for r in results if isinstance(r, dict)]
