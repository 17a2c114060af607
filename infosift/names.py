"""The one pattern every user-given name must match: variant, loss, dataset, pool and profile names.

Such a name becomes a path component that ``atomic_output`` replaces (results/select/<variant>-<budget>),
a DVC stage name, and a word in the command DVC and the Ray fan-out hand to a shell. So it is checked once,
when the stage or flow that reads it starts: letters, digits, '_', '-' and '.', starting with a letter or
digit, no '..', at most 100 characters. Nothing that a shell, a path or DVC's ``${...}`` would read as syntax
gets through, and a bad name is one error before anything is written or deleted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from infosift.data import dataset_name
from infosift.errors import UnsafeNameError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
RULE = "letters, digits, '_', '-', '.', starting with a letter or digit, no '..', at most 100 characters"


def is_safe_name(name: object) -> bool:
    """Whether ``name`` is a string that fits the pattern (no '..' anywhere, so never a parent directory)."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None and ".." not in name


def check_name(name: object, where: str) -> str:
    """``name`` itself, or one UnsafeNameError saying where it came from and what a name may hold."""
    if not is_safe_name(name):
        shown = repr(name)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise UnsafeNameError(f"{where}: {shown} is not a safe name ({RULE})")
    return name  # type: ignore[return-value]


def check_names(names: Iterable[object], where: str) -> list[str]:
    """check_name for each of ``names`` (a list, or the keys of a mapping); the error quotes the bad one."""
    return [check_name(n, where) for n in names]


def check_params_names(p: dict) -> None:
    """Every name a params mapping gives: download.dataset, select.run and the select.variants keys,
    finetune.losses. DVC puts these into stage names and shell commands when it reads dvc.yaml, before any
    stage of ours starts, so a flow checks them all first. Values of the wrong type are left to the stages'
    own checks, which name the parameter."""
    sections = {k: v if isinstance(v, dict) else {} for k, v in p.items()}
    download, select, finetune = (sections.get(k, {}) for k in ("download", "select", "finetune"))
    if isinstance(download.get("dataset"), str):  # a file, folder or hub id: its short name is what paths carry
        check_name(dataset_name(download["dataset"]), "params.yaml download.dataset's name")
    if isinstance(select.get("run"), list):
        check_names(select["run"], "params.yaml select.run")
    if isinstance(select.get("variants"), dict):
        check_names(select["variants"], "params.yaml select.variants")
    if isinstance(finetune.get("losses"), list):
        check_names(finetune["losses"], "params.yaml finetune.losses")
