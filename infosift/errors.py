"""The error types every layer raises for bad input, so a stage can catch them in one place.

All are ValueErrors carrying a one-line message that says where and what ("pool.jsonl:2: missing field
'answer'"); a stage prints it as ``error: <message>`` and exits non-zero. Anything else is a bug and
keeps its traceback. The exit codes and the progress-bar cleanup that go with that line live here too, so that
the stages (stages/_common.py) and the ``infosift`` command (infosift/cli.py) end alike.
"""

from __future__ import annotations

import sys

# Exit codes, so that whoever runs a stage or the command (the Prefect flow) knows whether a rerun can help.
# 1 stays Python's own: an uncaught exception, a bug that a rerun repeats. Codes from BSD's sysexits.h.
EXIT_USAGE = 64  # a command line the parser rejects, or a verb run where it cannot work
EXIT_BAD_INPUT = 65  # the project's errors: bad params, data or files; the same input fails the same way again
EXIT_TRANSIENT = 75  # a failure the world may heal: a server unreachable or timing out, memory exhausted


def end_progress_bars() -> None:
    """Close the tqdm bars an error interrupted, so that the error line starts a line of its own.

    tqdm redraws a bar with '\\r' and no newline; an error printed after it would sit at the end of the bar's
    line, and the bar would be drawn once more at exit. tqdm is looked up, never imported.
    """
    tqdm = sys.modules.get("tqdm")
    bars = list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or [])
    for bar in bars:
        bar.leave = False
        bar.close()
    if bars:
        sys.stderr.write("\n")


class InfosiftError(ValueError):
    """Bad input that the user can fix; the message is one line."""


class DataError(InfosiftError):
    """Bad input data; the message names the file, the line and what is wrong."""


class SelectionError(InfosiftError):
    """A selection request that cannot be honoured (budget above pool size, bad features...)."""


class ModelResolutionError(InfosiftError):
    """A base-model spec that cannot be turned into a usable local directory."""


class FeaturesError(InfosiftError):
    """A token-features directory that is missing, truncated or inconsistent."""


class ContaminationError(InfosiftError):
    """A contamination that cannot be applied (bad share, seed or mode; an altered record equal to a clean one)."""


class SketchError(InfosiftError):
    """A corpus FisherSketch cannot sketch (no token to add: no records, or every response cut by max_length)."""


class DeviceError(InfosiftError):
    """A device that is not a torch device, or one this machine does not have (cuda without a GPU)."""


class JudgeError(InfosiftError):
    """A judge that cannot give a verdict (server unreachable, rejected request, unreadable reply); names the URL."""


class TrackingError(InfosiftError):
    """An MLflow tracking server that cannot be used (unreachable, refusing requests); names the URL, never a secret."""


class ClusterError(InfosiftError):
    """A Ray cluster that cannot be reached, or that lost work beyond its retries; names the address or the shard."""


class RemoteError(InfosiftError):
    """A DVC remote that cannot be used (unknown, unreachable, refusing the credentials); names its URL, never a key."""


class UnsafeNameError(InfosiftError):
    """A variant, loss, dataset or profile name outside the one safe pattern (it becomes paths and shell words)."""
