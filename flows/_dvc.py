"""What every flow needs of the workspace: where it is, how a flow fails, and how a command runs under a flow.

Its own module so that the pipeline and its Ray fan-out (flows/parallel.py) share these without importing each other.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from flows import supervise

ROOT = Path(__file__).resolve().parent.parent


class FlowError(RuntimeError):
    """A user-facing problem of the flow (a failed stage, an unreachable API): one `error:` line, exit 1."""


def stream(cmd: list[str] | str, cwd: Path, env: dict, prefix: str = "") -> tuple[int, list[str]]:
    """Run ``cmd`` in a process group of its own, copy its output line by line into the Prefect log; return its
    exit code and last lines. A stop ends the whole group (supervise.stream)."""
    logger = get_run_logger()
    return supervise.stream(cmd, cwd, env, lambda line: logger.info(prefix + line))
