"""infosift.atomic: output appears whole or not at all, whatever happens inside the block."""

from __future__ import annotations

import pytest

from infosift.atomic import atomic_output, atomic_write_text


def test_failure_leaves_nothing_and_keeps_the_old_output(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in final.iterdir()] == ["old.txt"]


def test_success_replaces_a_directory_and_a_file(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    atomic_write_text(tmp_path / "a" / "b.txt", "one")
    atomic_write_text(tmp_path / "a" / "b.txt", "two")
    assert (tmp_path / "a" / "b.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]


def test_keep_existing_keeps_what_a_concurrent_run_finished_first(tmp_path):
    final = tmp_path / "cache"
    with atomic_output(final, keep_existing=True) as tmp:
        tmp.mkdir()
        (tmp / "ours").write_text("ours")
        final.mkdir()  # another process finishes while we are still writing
        (final / "theirs").write_text("theirs")
    assert [p.name for p in final.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
