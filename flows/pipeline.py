"""Prefect flow: the DVC stages in order, one `dvc repro <stage>` at a time, with retries and logs.

DVC decides what is stale and caches by content; Prefect adds retries, a run history and
schedules, and caches nothing itself (cache_policy=NONE): caching twice is how stale results leak.
Stages run one at a time because DVC holds a workspace lock. With a Ray address, the fine-tune and
evaluate items of the matrix run at once on the cluster instead (flows/parallel.py); DVC still
records every result in dvc.lock. A stage is retried only when its failure may heal (params.yaml
`flow`); SIGTERM or Ctrl-C stops the stage's whole process group and the run (flows/supervise.py),
and the next run resumes where it stopped.

    python -m flows.pipeline                    # the whole pipeline (ephemeral Prefect API)
    python -m flows.pipeline --stages select compare
    python -m flows.pipeline --ray-address auto # fine-tune/evaluate variants in parallel on Ray
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

# offline by default: the temporary server's telemetry only logs a failed DNS lookup here
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from flows import supervise  # noqa: E402
from flows._dvc import ROOT, FlowError, failed, heals, stream  # noqa: E402
from flows.preflight import check_config  # noqa: E402

# what the compare stage writes (its outs in dvc.yaml; a test holds this) and the flow publishes as artifacts
COMPARE_DIR = Path("results/compare")
COMPARE_MARKDOWN = {"compare-table": "table.md", "selection-evidence": "evidence.md"}
COMPARE_VERDICTS = "evidence.csv"


def flow_policy() -> supervise.Policy:
    """params.yaml's `flow` block (retries, their delay, a stop's grace); a bad value is a FlowError."""
    from stages._common import StageError

    try:
        return supervise.policy(ROOT)
    except StageError as e:
        raise FlowError(str(e)) from None


def dvc_stages(dvc_yaml: Path | None = None) -> list[str]:
    """The stage names in dvc.yaml, in the order written there (producers before consumers).

    dvc.yaml is the one description of the pipeline's shape; the flow keeps no list of its own.
    """
    import yaml

    dvc_yaml = dvc_yaml or ROOT / "dvc.yaml"
    return list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))


STAGES = dvc_stages()


def run_name() -> str:
    """`pipeline-<commit>[-dirty]-<params8>`: the code and the parameters a run used, readable in the run list.

    params8 is the first 8 hex digits of params.yaml's sha256; `-dirty` marks tracked files changed since the commit.
    """
    from infosift.hashing import file_sha256

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "nogit"
    dirty = "-dirty" if commit != "nogit" and git("status", "--porcelain", "--untracked-files=no") else ""
    params = ROOT / "params.yaml"
    params8 = file_sha256(params)[:8] if params.exists() else "noparams"
    return f"pipeline-{commit}{dirty}-{params8}"


def pipeline_env() -> dict:
    """The stages' environment: compare tags its MLflow runs with the pipeline's flow-run id."""
    return {**os.environ, "INFOSIFT_PIPELINE_RUN": str(flow_run.get_id() or "")}


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=heals, cache_policy=NONE, task_run_name="dvc repro {stage}")
def dvc_repro(stage: str, force: bool = False) -> None:
    """Run one stage (all items of a matrix stage) and stream its output into the Prefect log.

    On failure the log says whether it is retried and why (supervise.classify).
    """
    cmd = ["dvc", "repro", stage] + (["--force", "--single-item"] if force else [])
    get_run_logger().info("$ %s", " ".join(cmd))
    code, tail = stream(cmd, ROOT, pipeline_env())
    if code != 0:
        raise failed(f"dvc repro {stage}", code, supervise.classify(code, tail))


@task(cache_policy=NONE, task_run_name="dvc status")
def always_changed(dvc_yaml: Path | None = None) -> set[str]:
    """The stages dvc.yaml marks always_changed: the fetch stages, which look at sources outside the repository."""
    import yaml

    path = dvc_yaml or ROOT / "dvc.yaml"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.exists() else {}
    return {name for name, spec in stages.items() if isinstance(spec, dict) and spec.get("always_changed")}


def changed(stages: list[str]) -> dict | None:
    """One `dvc status --with-deps` over all targets (instead of a process per stage): what is out of date among
    ``stages`` and every stage they read from, as DVC lists it; None when DVC could not say. An always-changed
    (fetch) stage is listed whenever the targets reach it: that is how the flow knows which sources to look at."""
    proc = subprocess.run(["dvc", "status", "--json", "--with-deps", *stages], cwd=ROOT, capture_output=True, text=True)
    try:
        found = json.loads(proc.stdout.strip() or "{}")
    except ValueError:
        return None
    return found if proc.returncode == 0 and isinstance(found, dict) else None


def stale(found: dict | None) -> list[str] | None:
    """What ``changed`` found that a run must redo, the always-changed fetch items aside (pipeline() runs those
    first, and what they wrote is what status compares); None when DVC could not say."""
    skip = always_changed()
    return None if found is None else [k for k in found if k.split("@")[0] not in skip]


def _cell(text: str) -> object:
    """A CSV cell as the UI should show it: a number to 4 significant digits, nothing for blank, NaN or inf
    (JSON has no such numbers), else the text."""
    if text in ("", "None"):
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and "." not in text else float(f"{number:.4g}")


@task(cache_policy=NONE, task_run_name="publish compare")
def publish_compare() -> list[str]:
    """The compare stage's table and evidence as artifacts of this flow run (markdown + a table of verdicts).

    Read from the files the stage wrote: stages know nothing of Prefect. Keyed artifacts keep a history per key
    in the UI (Artifacts page), one version per run. Returns the keys created.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    logger = get_run_logger()
    out, created = ROOT / COMPARE_DIR, []
    for key, name in COMPARE_MARKDOWN.items():
        if (out / name).exists():
            create_markdown_artifact((out / name).read_text(), key=key, description=f"{COMPARE_DIR / name}")
            created.append(key)
    verdicts = out / COMPARE_VERDICTS
    if verdicts.exists():
        with verdicts.open(newline="") as f:
            rows = [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
        create_table_artifact(rows, key="selection-verdicts", description=f"{COMPARE_DIR / COMPARE_VERDICTS}")
        created.append("selection-verdicts")
    if not created:
        logger.warning("no compare outputs in %s to publish", out)
    return created


@flow(name="infosift-pipeline", flow_run_name=run_name, log_prints=True)
def pipeline(
    stages: list[str] | None = None,
    force: bool = False,
    ray_address: str | None = None,
    cpus_per_item: float = 1,
    gpus_per_item: float = 0,
) -> None:
    """Every stage of dvc.yaml in its order (download -> embed -> select -> ... -> compare), each through DVC.

    When nothing changed, one status check ends the run: an up-to-date workspace costs little more than
    Prefect's own start-up, not one `dvc repro` process per stage. With ``ray_address`` ("auto", "host:port",
    "ray://host:10001"), the out-of-date fine-tune and evaluate items run concurrently as Ray tasks, each
    reserving ``cpus_per_item`` / ``gpus_per_item``. When compare is among the stages, its table and verdicts
    become artifacts of the run.
    """
    supervise.take_signals()  # Prefect's engine put its own SIGTERM handler in place for the run
    check_names()  # DVC puts them into the shell commands it runs
    stages = stages or dvc_stages()
    policy = flow_policy()
    supervise.set_grace(policy.stop_grace_s)
    repro = dvc_repro.with_options(retries=policy.retries, retry_delay_seconds=policy.retry_delay_s)
    if ray_address:
        from infosift.scale.cluster import check_address

        cluster_env()  # a SQLite store refused before any stage runs

        check_address(ray_address)  # before any stage runs, not hours later at the first fan-out
    if not force:
        # the fetch items this run reaches (its sources outside the repository) are looked at first, so that
        # status sees their stamps: a dataset file edited in place is found even when only compare is asked for
        found = changed(stages)
        fetches = sorted(set(found or {}) - set(stale(found) or []))
        for item in fetches:
            repro(item)
        if fetches:
            found = changed(stages)
        stages = [s for s in stages if s not in always_changed()]
    if not force and stale(found) == []:
        print(f"dvc: {', '.join(stages)} up to date; nothing to run")
    elif ray_address:
        from flows.parallel import PARALLEL_STAGES, fan_out

        for stage in stages:
            if stage in PARALLEL_STAGES:
                workers = cluster_env()  # what the Ray workers need of this shell
                fan_out(stage, ray_address, force=force, cpus=cpus_per_item, gpus=gpus_per_item, root=ROOT, env=workers,
                        policy=policy)  # fmt: skip
            else:
                repro(stage, force=force)
    else:
        for stage in stages:
            repro(stage, force=force)
    if "compare" in stages:
        publish_compare()


def check_names() -> None:
    """params.yaml's variant, loss and dataset names against the one safe pattern, before the first `dvc repro`:
    DVC writes them into stage names and the commands it hands to a shell (as does the Ray fan-out)."""
    from infosift.names import check_params_names
    from stages._common import StageError, params

    try:
        p = params(path=str(ROOT / "params.yaml"))
    except StageError:  # no or unreadable params.yaml: the stages say so themselves
        return
    check_params_names(p)


def cluster_env() -> dict[str, str]:
    """What Ray workers need of this shell to track and judge as a `dvc repro` here would: MLflow's variables and the
    judge key's. The store must be a server: a SQLite file is refused (TrackingError) before any stage runs."""
    from infosift.tracking_live import check_shared_store, tracking_uri, worker_env
    from stages._common import StageError, params

    try:
        p = params(path=str(ROOT / "params.yaml"))
    except StageError:  # the stages say what is wrong with it
        return {}
    cmp = p.get("compare") if isinstance(p.get("compare"), dict) else {}
    evaluate = p.get("evaluate") if isinstance(p.get("evaluate"), dict) else {}
    mt = evaluate.get("mt_bench") if isinstance(evaluate.get("mt_bench"), dict) else {}
    key_env = mt.get("judge_api_key_env", "OPENAI_API_KEY")
    extra = (key_env,) if isinstance(key_env, str) else ()
    if cmp.get("mlflow", True) is False:
        return {k: os.environ[k] for k in extra if os.environ.get(k)}
    uri = tracking_uri(ROOT, cmp.get("tracking_uri") if isinstance(cmp.get("tracking_uri"), str) else None)
    check_shared_store(uri)
    return worker_env(uri, extra)


def prefect_api_error(url: str | None = None) -> str | None:
    """Why the configured Prefect API cannot be used, or None (reachable, or none set: a temporary one starts).

    Asked once before anything runs, so an unreachable server costs about a second and one line, not Prefect's
    retries and a traceback.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = url or get_current_settings().api.url
    if not url:
        return None
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is None:
        return None
    reason = " ".join(str(problem).split()) or type(problem).__name__
    return (
        f"PREFECT_API_URL {url}: cannot reach the Prefect API ({reason}); start one with "
        "`prefect server start` or unset PREFECT_API_URL to run on a temporary one"
    )


def guarded(run, ray_address: str | None = None) -> int:
    """Run ``run()`` (a flow call or serve) and turn user-facing failures into one `error:` line and exit code 1.

    The Prefect API and the Ray address are checked first, so bad ones cost one line, not a flow run's traceback.
    """
    import httpx

    from infosift.errors import InfosiftError

    try:
        check_names()  # one line here, not a failed flow run's traceback
        if problem := prefect_api_error():
            raise FlowError(problem)
        if ray_address:
            from infosift.scale.cluster import check_address

            cluster_env()
            check_address(ray_address)
        run()
    except (FlowError, InfosiftError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:  # the server went away during the run
        if signum := supervise.stopped():  # a stop that reached the temporary API too: the stop is what happened
            raise supervise.Stopped(signum) from None
        url = ", ".join(supervise.api_urls()) or "(none)"
        print(f"error: the Prefect API at {url} is gone ({e}); the next run resumes from the last finished stage",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=None, choices=STAGES, help="default: every stage of dvc.yaml")
    parser.add_argument("--force", action="store_true", help="rerun the stages even if DVC finds them up to date")
    parser.add_argument(
        "--ray-address",
        default=None,
        help="run fine-tune/evaluate items in parallel on Ray: auto (the cluster on this machine, else a new local "
        "one), host:6379 or ray://host:10001; default: one stage at a time, no Ray",
    )
    parser.add_argument("--cpus-per-item", type=float, default=1, help="Ray CPUs each fine-tune/evaluate item reserves")
    parser.add_argument("--gpus-per-item", type=float, default=0, help="Ray GPUs each fine-tune/evaluate item reserves")
    args = parser.parse_args(argv)
    return stoppable(
        lambda: guarded(  # first every chosen stage's params and inputs (check_config), then the stages
            lambda: check_config(args.stages or STAGES)
            or pipeline(
                stages=args.stages,
                force=args.force,
                ray_address=args.ray_address,
                cpus_per_item=args.cpus_per_item,
                gpus_per_item=args.gpus_per_item,
            ),
            args.ray_address,
        )
    )


def stoppable(run) -> int:
    """``run()`` (returning an exit code) with SIGTERM and SIGINT stopping it: the running stage's process group
    gets the signal, a grace (params.yaml flow.stop_grace_s), then SIGKILL; the exit code is 128 + the signal."""
    try:
        grace = flow_policy().stop_grace_s
    except FlowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        with supervise.handling_signals(grace):
            code = run()
    except supervise.Stopped as e:
        signum = e.signum
    except BaseException:
        if (signum := supervise.stopped()) is None:
            raise
        # else the stop as another exception (Ray's ray.get turns it into a plain KeyboardInterrupt), or an error
        # on the way out of it (the API went with the signal): the stop is what happened
    else:
        if (signum := supervise.stopped()) is None:
            return code
    print(
        f"stopped by {signal.Signals(signum).name}; the next run resumes from the last finished stage", file=sys.stderr
    )
    return 128 + signum


if __name__ == "__main__":
    supervise.exit_process(main())
