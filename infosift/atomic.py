"""Write to a temporary sibling, rename on success: a killed run never leaves output that looks finished.

The one home of this pattern: stages (through stages._common), embed shards and their assembly, the
bundled-model cache, hub downloads and evaluation logs all write through ``atomic_output``.

A rename is atomic but not durable: after a power cut the directory entry may point at a file whose blocks
never reached the disk. So every file and directory of the output is fsynced before the rename, and the parent
directory after it. Temporaries are named '.tmp-<name>-<host>-<pid>-<random>': pids repeat across the hosts of a
Ray cluster writing to shared storage, and a random part keeps two writers in one process apart too. What a
killed writer on this host left behind is swept when the same output is next written.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
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
    _sweep(final)
    tmp = final.with_name(_unique(".tmp", final.name))
    try:
        yield tmp
        _fsync_tree(tmp)
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
        old = final.with_name(_unique(".old", final.name))
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
    _fsync_dir(final.parent)  # the rename itself reaches the disk before the old output goes
    if old is not None:
        _remove(old)


_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"


def _unique(prefix: str, name: str) -> str:
    """'<prefix>-<name>-<host>-<pid>-<8 hex>': unique across hosts, processes and concurrent writers of one
    process; the name part is cut so the whole stays within a file name's 255 bytes."""
    return f"{prefix}-{name[:150]}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _sweep(final: Path) -> None:
    """Remove what killed writers of ``final`` on this host left ('.tmp-'/'.old-' siblings whose pid is gone).

    Only this host's: another host's pid says nothing here. A pid that is alive (perhaps reused) is left alone.
    An '.old-' sibling is removed only when ``final`` exists, so the one copy of an output is never the one lost.
    """
    pattern = re.compile(rf"\.(tmp|old)-{re.escape(final.name[:150])}-{re.escape(_HOST)}-(\d+)-[0-9a-f]{{8}}")
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        m = pattern.fullmatch(path.name)
        if m is None or _alive(int(m.group(2))) or (m.group(1) == "old" and not final.exists()):
            continue
        try:
            _remove(path)
        except OSError:  # another sweeper got there first, or not ours to remove: not this writer's problem
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def _fsync_tree(path: Path) -> None:
    """fsync every regular file under ``path`` (or ``path`` itself), then every directory, deepest first."""
    if path.is_symlink() or not path.exists():
        return
    if not path.is_dir():
        _fsync_file(path)
        return
    for root, _, files in os.walk(path, topdown=False):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                _fsync_file(p)
        _fsync_dir(Path(root))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """fsync a directory's entries; where the platform or file system cannot (Windows, some network mounts),
    the rename is as durable as it can be made there."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


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
