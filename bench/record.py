"""A bench's printed report kept as a result file, for the docs to include (docs/tables.py): ``--out PATH``.

The file starts with the command that produced it (``$ python bench/NAME.py ARGS``, without ``--out``) and then
holds exactly what the run printed, so a figure in the docs always names its command and comes from a file.
"""

from __future__ import annotations

import atexit
import io
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class _Tee(io.TextIOBase):
    """Writes to the terminal and to a buffer."""

    def __init__(self, terminal, buffer: io.StringIO) -> None:
        self.terminal, self.buffer = terminal, buffer

    def write(self, text: str) -> int:
        self.buffer.write(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.terminal.flush()


def command_line(argv: list[str]) -> str:
    """``$ python bench/NAME.py ARGS`` of ``argv`` (sys.argv), ``--out PATH`` left out."""
    args, skip = [], False
    for a in argv[1:]:
        if skip or a == "--out" or a.startswith("--out="):
            skip = a == "--out"
            continue
        args.append(a)
    script = Path(argv[0]).resolve()
    name = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script.name
    return "$ " + shlex.join(["python", str(name), *args])


def record_to(path: Path | None, argv: list[str] | None = None) -> None:
    """From now on, also keep what is printed; at exit, write it to ``path`` after the command (None: nothing)."""
    if path is None:
        return
    buffer = io.StringIO()
    sys.stdout = _Tee(sys.stdout, buffer)
    head = command_line(argv or sys.argv)

    def write() -> None:
        sys.path.insert(0, str(ROOT))  # the project, also when it is not installed
        from infosift.atomic import atomic_output

        sys.stdout.flush()
        with atomic_output(path) as tmp:
            Path(tmp).write_text(head + "\n" + buffer.getvalue())

    atexit.register(write)
