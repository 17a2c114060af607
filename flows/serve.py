"""Scheduled runs: serve the pipeline flow as a Prefect deployment with a cron schedule.

    prefect server start                                   # another shell; UI at http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve --cron "0 3 * * *"               # nightly at 03:00; Ctrl-C stops serving
    prefect deployment run infosift-pipeline/nightly       # one run now, from any shell

The serving process executes the scheduled and triggered runs itself, so no work pool or worker is
needed. A scheduled run is a `dvc repro` of every stage: it rebuilds only what changed since the last
one (new commits, params, data), and finishes in seconds when nothing did. One run at a time, because
DVC holds a workspace lock.
"""

from __future__ import annotations

import argparse
import sys

from flows.pipeline import STAGES, pipeline


def deployment(name: str = "nightly", cron: str = "0 3 * * *", stages: list[str] | None = None, force: bool = False):
    """The pipeline as a RunnerDeployment: one concurrent run, a cron schedule, stages as parameters."""
    return pipeline.to_deployment(
        name=name,
        cron=cron,
        parameters={"stages": stages or STAGES, "force": force},
        concurrency_limit=1,
        description=" -> ".join(STAGES) + ", each through dvc repro",
        tags=["infosift"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="nightly")
    parser.add_argument("--cron", default="0 3 * * *", help="when to run (cron, server time zone UTC)")
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--force", action="store_true", help="rerun the stages even if DVC finds them up to date")
    args = parser.parse_args(argv)
    from prefect import serve

    serve(deployment(args.name, args.cron, args.stages, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
