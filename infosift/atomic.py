"""Write to a temporary sibling, rename on success: a killed run never leaves output that looks finished.

The one home of this pattern: stages (through stages._common), embed shards and their assembly, the
bundled-model cache, hub downloads and evaluation logs all write through ``atomic_output``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(final: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a free temporary sibling path (file or dir: the block creates it); on success it becomes ``final``.

    A failing block removes it; a killed one leaves at most a hidden '.tmp-*' sibling. An older ``final``
    is replaced (a directory is moved aside first, so the swap is two renames). ``keep_existing``: when
    ``final`` exists by the time the block finishes (a concurrent run got there first), theirs is kept,
    so a reader of it is never pulled from under.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError):
            _name_final(e, tmp, final)
        raise
    if keep_existing and final.exists():
        _remove(tmp)
        return
    try:
        _commit(tmp, final, keep_existing)
    except OSError as e:
        try:  # best effort: where the rename was refused, removing may be refused too
            _remove(tmp)
        except OSError:
            pass
        _name_final(e, tmp, final)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old content or the new, never a part."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _commit(tmp: Path, final: Path, keep_existing: bool) -> None:
    """Rename ``tmp`` onto ``final``; a directory in the way is moved aside first and removed after."""
    old = None
    if (final.exists() or final.is_symlink()) and (final.is_dir() or tmp.is_dir()):
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        _remove(old)
        os.rename(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        if not (keep_existing and final.exists()):  # else: a concurrent run finished first; keep theirs
            raise
        _remove(tmp)
        return
    if old is not None:
        _remove(old)


def _name_final(e: OSError, tmp: Path, final: Path) -> None:
    """Put ``final`` where ``e`` names ``tmp`` (or a path under it): the user knows the output's name, and the
    temporary sibling is gone by the time the error is printed (results/compare: Permission denied, not
    results/.tmp-compare-123: ...)."""
    for attr in ("filename", "filename2"):
        name = getattr(e, attr, None)
        if isinstance(name, str | os.PathLike):
            path = Path(name)
            if path == tmp or tmp in path.parents:
                setattr(e, attr, str(final / path.relative_to(tmp)) if path != tmp else str(final))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
