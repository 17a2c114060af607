"""What every stage entry point shares: params, atomic outputs, one-line errors, offline defaults."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

# Offline unless the user opts in: nothing reaches a hub by accident.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class StageError(Exception):
    """A user-facing problem: printed as one line, exit code 1."""


def params(section: str | None = None, path: str = "params.yaml") -> dict:
    """params.yaml (or one section of it). Only stages read it; the library gets plain arguments."""
    p = Path(path)
    if not p.exists():
        raise StageError(f"{path} not found (run stages from the repository root)")
    data = yaml.safe_load(p.read_text()) or {}
    if section is None:
        return data
    if section not in data:
        raise StageError(f"{path} has no '{section}' section")
    return data[section]


def variant_name(variant: str, budget: int | str, seed: int | str | None = None, loss: str | None = None) -> str:
    """The one naming rule for matrix items: '<variant>-<budget>[-s<seed>][-<loss>]'."""
    return f"{variant}-{budget}" + (f"-s{seed}" if seed is not None else "") + (f"-{loss}" if loss else "")


def whole_number(text: str, what: str) -> int:
    """An integer command-line argument, or a StageError saying which one is not."""
    try:
        return int(text)
    except ValueError:
        raise StageError(f"{what} must be a whole number, got {text!r}") from None


@contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `final` only if the block succeeds.

    A killed or failing stage leaves at most a '.tmp-*' sibling, never a finished-looking output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(final)
    os.replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run(main: Callable[[list[str]], None]) -> None:
    """Call main(argv); known user errors end as a single 'error: ...' line and exit code 1."""
    from infosift.data import DataError
    from infosift.select.base import SelectionError

    try:
        main(sys.argv[1:])
    except (StageError, DataError, SelectionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
