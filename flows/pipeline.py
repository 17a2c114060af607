"""Prefect flow: the DVC stages in order, one `dvc repro <stage>` at a time, with retries and logs.

DVC decides what is stale and caches by content; Prefect adds retries, a run history and
schedules, and caches nothing itself (cache_policy=NONE): caching twice is how stale results leak.
Stages run one at a time because DVC holds a workspace lock.

    python -m flows.pipeline                    # the whole pipeline (ephemeral Prefect API)
    python -m flows.pipeline --stages select compare
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# offline by default: the temporary server's telemetry only logs a failed DNS lookup here
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def dvc_stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """The stage names in dvc.yaml, in the order written there (producers before consumers).

    dvc.yaml is the one description of the pipeline's shape; the flow keeps no list of its own.
    """
    import yaml

    return list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))


STAGES = dvc_stages()


@task(retries=2, retry_delay_seconds=30, cache_policy=NONE, task_run_name="dvc repro {stage}")
def dvc_repro(stage: str, force: bool = False) -> None:
    """Run one stage (all items of a matrix stage) and stream its output into the Prefect log."""
    logger = get_run_logger()
    cmd = ["dvc", "repro", stage] + (["--force", "--single-item"] if force else [])
    env = {**os.environ, "INFOSIFT_PIPELINE_RUN": str(flow_run.get_id() or "")}
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line and "\r" not in line:  # skip progress-bar redraws; they are for terminals
            logger.info(line)
    if proc.wait() != 0:
        raise RuntimeError(f"dvc repro {stage} failed with exit code {proc.returncode}")


@task(cache_policy=NONE, task_run_name="dvc status")
def up_to_date(stages: list[str]) -> bool:
    """One `dvc status --quiet` over all targets (exit 0: nothing changed), instead of a process per stage."""
    proc = subprocess.run(["dvc", "status", "--quiet", *stages], cwd=ROOT, capture_output=True, text=True)
    return proc.returncode == 0


@flow(name="infosift-pipeline", log_prints=True)
def pipeline(stages: list[str] | None = None, force: bool = False) -> None:
    """Every stage of dvc.yaml in its order (download -> embed -> select -> ... -> compare), each through DVC.

    When nothing changed, one status check ends the run: an up-to-date workspace costs little more than
    Prefect's own start-up, not one `dvc repro` process per stage.
    """
    stages = stages or STAGES
    if not force and up_to_date(stages):
        print(f"dvc: {', '.join(stages)} up to date; nothing to run")
        return
    for stage in stages:
        dvc_repro(stage, force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--force", action="store_true", help="rerun the stages even if DVC finds them up to date")
    args = parser.parse_args(argv)
    try:
        pipeline(stages=args.stages, force=args.force)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
