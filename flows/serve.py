"""Scheduled runs without a work pool: serve the deployment that prefect.yaml declares from this process.

    prefect server start                                   # another shell; UI at http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                                  # prefect.yaml's schedule; Ctrl-C stops serving
    python -m flows.serve --cron "0 * * * *"               # hourly instead
    prefect deployment run infosift-pipeline/nightly       # one run now, from any shell

The serving process executes the scheduled and triggered runs itself, so no work pool or worker is
needed (for those, `prefect deploy` reads prefect.yaml; see there). Name, schedule, parameters and the
one-run-at-a-time limit come from prefect.yaml, so both ways deploy the same thing. A scheduled run is a
`dvc repro` of every stage: it rebuilds only what changed since the last one (new commits, params, data),
and finishes in seconds when nothing did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.pipeline import ROOT, STAGES, guarded, pipeline

PREFECT_YAML = ROOT / "prefect.yaml"


def declared(name: str = "nightly", path: Path = PREFECT_YAML) -> dict:
    """The deployment called ``name`` in prefect.yaml (the one description of what gets deployed)."""
    import yaml

    deployments = {d["name"]: d for d in (yaml.safe_load(path.read_text()) or {}).get("deployments", [])}
    if name not in deployments:
        raise SystemExit(f"error: {path.name}: no deployment {name!r}; declared: {', '.join(deployments) or 'none'}")
    return deployments[name]


def deployment(
    name: str = "nightly", cron: str | None = None, stages: list[str] | None = None, force: bool | None = None
):
    """prefect.yaml's deployment ``name`` as a RunnerDeployment; ``cron``, ``stages`` and ``force`` override it."""
    spec = declared(name)
    parameters = dict(spec.get("parameters") or {})
    if stages is not None:
        parameters["stages"] = stages
    if force is not None:
        parameters["force"] = force
    from prefect.schedules import Cron

    schedule = (spec.get("schedules") or [{}])[0]
    return pipeline.to_deployment(
        name=name,
        schedules=[Cron(cron or schedule["cron"], timezone=schedule.get("timezone") or "UTC")],
        parameters=parameters,
        concurrency_limit=spec.get("concurrency_limit"),
        description=spec.get("description"),
        tags=spec.get("tags"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="nightly", help="a deployment declared in prefect.yaml")
    parser.add_argument("--cron", default=None, help="when to run (cron, UTC); default: prefect.yaml's schedule")
    parser.add_argument("--stages", nargs="+", default=None, choices=STAGES)
    parser.add_argument("--force", action="store_true", default=None, help="rerun stages DVC finds up to date")
    args = parser.parse_args(argv)
    from prefect import serve

    return guarded(lambda: serve(deployment(args.name, args.cron, args.stages, args.force)))


if __name__ == "__main__":
    sys.exit(main())
