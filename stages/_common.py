"""What every stage entry point shares: params, atomic outputs, one-line errors, offline defaults."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from infosift.atomic import atomic_output as atomic_output  # re-exported: the library's one atomic writer
from infosift.device import torch_device
from infosift.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, DeviceError, InfosiftError, end_progress_bars

# Offline unless the user opts in: nothing reaches a hub by accident.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class StageError(Exception):
    """A user-facing problem: printed as one line, exit code EXIT_BAD_INPUT."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (two variants named alike): PyYAML keeps the
    last one silently, DVC's own YAML reader refuses the file."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):  # unhashable: let PyYAML raise its own error
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats without a dot (1e-3, 2e-05): PyYAML (YAML 1.1) reads them as strings, but users write them and
# DVC (`dvc exp run -S`, YAML 1.2) writes them into params.yaml that way
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


# dotted key -> value, applied on top of params.yaml as `dvc exp run -S` would; empty except while flows/preflight.py
# checks a run that will set them (an experiment of the evidence profile)
OVERRIDES: dict[str, object] = {}


def with_overrides(data: dict, overrides: dict[str, object]) -> dict:
    """``data`` with each dotted ``key: value`` of ``overrides`` set (the sections on the way copied, not changed)."""
    data = dict(data)
    for key, value in overrides.items():
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            child = node.get(part) if isinstance(node.get(part), dict) else {}
            node[part] = dict(child)
            node = node[part]
        node[parts[-1]] = value
    return data


def params(section: str | None = None, path: str = "params.yaml") -> dict:
    """params.yaml (or one section of it). Only stages read it; the library gets plain arguments."""
    p = Path(path)
    if not p.exists():
        raise StageError(f"{path} not found (run stages from the repository root)")
    try:
        data = yaml.load(p.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise StageError(f"{path}: not UTF-8 (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise StageError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    data = with_overrides(data, OVERRIDES if path == "params.yaml" else {})
    if section is None:
        return data
    if section not in data:
        raise StageError(f"{path} has no '{section}' section")
    if not isinstance(data[section], dict):  # every section is a mapping: `select: fishersft` is a typo
        raise StageError(f"{path} {section}: must be a mapping, got {data[section]!r}")
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


def transient(e: BaseException) -> bool:
    """Whether ``e``, or what caused it, is a failure a rerun may not meet again: a network error, a timeout,
    memory exhausted. A project error raised while handling one (MLflow unreachable, Ray gone) counts too.

    Third-party classes are matched only if their library is already imported (no import here for a check).
    """
    httpx, requests = sys.modules.get("httpx"), sys.modules.get("requests")
    kinds: tuple[type, ...] = (MemoryError, ConnectionError, TimeoutError)
    kinds += (httpx.TransportError,) if httpx is not None else ()
    kinds += (requests.ConnectionError, requests.Timeout) if requests is not None else ()
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:  # the chain that `raise ... from` or an `except` builds
        if isinstance(cause, kinds) or type(cause).__name__ == "OutOfMemoryError":  # torch's, a RuntimeError
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def run(main: Callable[[list[str]], None]) -> None:
    """Call main(argv); a failure it can name ends as a single 'error: ...' line and a telling exit code.

    Bad input exits with EXIT_BAD_INPUT: the library's InfosiftError family, StageError, missing or unreadable
    files (OSError), ValueErrors from reading corrupted inputs (a truncated .npy, offsets that disagree with
    values), a missing parameter. A failure that may heal (``transient``: network, timeout, memory, or a project
    error they caused) exits with EXIT_TRANSIENT. Anything else is a bug and keeps its traceback (exit 1). A stage
    writes through atomic_output, so nothing finished-looking is left behind either way.
    """
    try:
        main(sys.argv[1:])
    except Exception as e:
        if transient(e):
            code = EXIT_TRANSIENT
        elif isinstance(e, StageError | InfosiftError | OSError | ValueError | KeyError):
            code = EXIT_BAD_INPUT
        else:
            raise
        end_progress_bars()
        text = f"missing parameter or field {e}" if isinstance(e, KeyError) else _one_line(e)
        print(f"error: {text}", file=sys.stderr)
        sys.exit(code)


def _one_line(e: BaseException) -> str:
    """The exception's message on one line (filename first for OSErrors that carry one)."""
    if isinstance(e, OSError) and getattr(e, "filename", None) and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def check_param(
    value: object,
    name: str,
    kind: type,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple | list | None = None,
    allow_none: bool = False,
) -> object:
    """``value`` of params.yaml's ``name`` (dotted) if it has the right type and range, else a StageError.

    Checked when a stage starts, so a mistyped parameter ends in one line naming it, not a traceback later.
    """
    where = f"params.yaml {name}"
    if value is None:
        if allow_none:
            return None
        raise StageError(f"{where}: required, got nothing")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise StageError(f"{where}: must be a whole number, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StageError(f"{where}: must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # YAML's .nan and .inf are floats too
            raise StageError(f"{where}: must be a finite number, got {value!r}")
    if kind in (str, list, dict, bool) and not isinstance(value, kind):
        raise StageError(f"{where}: must be a {kind.__name__}, got {value!r}")
    if low is not None and value < low:  # type: ignore[operator]
        raise StageError(f"{where}: must be >= {low}, got {value!r}")
    if high is not None and value > high:  # type: ignore[operator]
        raise StageError(f"{where}: must be <= {high}, got {value!r}")
    if choices is not None and value not in choices:
        raise StageError(f"{where}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_items(
    values: object,
    name: str,
    kind: type,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple | list | None = None,
    unique: bool = True,
) -> list:
    """A non-empty list of params.yaml ``name`` whose items each pass check_param (``name[i]`` in the error).

    ``unique``: a repeated item (budgets [5, 5], seeds [0, 0]) would give two runs one output name.
    """
    items = check_param(values, name, list)
    if not items:
        raise StageError(f"params.yaml {name}: empty; give at least one value")
    checked = [check_param(v, f"{name}[{i}]", kind, low=low, high=high, choices=choices) for i, v in enumerate(items)]
    if unique:
        repeated = sorted({v for v in checked if checked.count(v) > 1}, key=str)
        if repeated:
            raise StageError(f"params.yaml {name}: {repeated[0]!r} is listed twice")
    return checked


def check_device(value: object, name: str) -> str | None:
    """A params.yaml device (cpu, cuda, cuda:N, mps, or nothing for the default), checked to exist here.

    Checked when the stage starts: torch would otherwise fail deep inside model loading with a traceback. The check
    is the library's (infosift.device.torch_device); the stage only names the parameter.
    """
    if value is None:
        return None
    device = check_param(value, name, str)
    try:
        torch_device(device)
    except DeviceError as e:
        raise StageError(f"params.yaml {name}: {e}") from None
    return device


def check_keys(section: dict, name: str, known: set[str] | list[str]) -> None:
    """An unknown key in a params section is a typo until proven otherwise: name it and the known ones."""
    if not isinstance(section, dict):
        raise StageError(f"params.yaml {name}: must be a mapping, got {section!r}")
    unknown = sorted(set(section) - set(known), key=str)  # YAML keys may be numbers too
    if unknown:
        raise StageError(f"params.yaml {name}.{unknown[0]}: unknown parameter; known: {', '.join(sorted(known))}")
