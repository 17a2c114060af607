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


class StageFailed(FlowError):
    """A stage's command failed; ``failure`` says why and whether a retry may heal it."""

    def __init__(self, message: str, failure: supervise.Failure) -> None:
        super().__init__(message)
        self.failure = failure


def heals(task, task_run, state) -> bool:
    """Prefect's retry condition: only a failure that may heal is retried (a stage's own `error:` is not)."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, StageFailed) and exc.failure.transient


def failed(what: str, code: int, failure: supervise.Failure) -> StageFailed:
    """Log why ``what`` failed and whether it is retried (the task's retry_condition_fn is `heals`); the error."""
    then = "may heal, retried while retries remain (params.yaml flow.retries)" if failure.transient else "not retried"
    get_run_logger().warning("%s: %s; %s", what, failure.why, then)
    return StageFailed(f"{what} failed with exit code {code}: {failure.why}", failure)


def stream(
    cmd: list[str] | str, cwd: Path, env: dict, prefix: str = "", record: Path | None = None
) -> tuple[int, list[str]]:
    """Run ``cmd`` in a process group of its own, copy its output line by line into the Prefect log; return its
    exit code and last lines. A stop ends the whole group (supervise.stream, which also says what ``record`` is)."""
    logger = get_run_logger()
    return supervise.stream(cmd, cwd, env, lambda line: logger.info(prefix + line), record)
