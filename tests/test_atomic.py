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


def test_files_and_directories_are_fsynced_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    """A rename is atomic, not durable: without fsync a power cut can leave the new name on empty blocks."""
    import os

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    final = tmp_path / "out"
    with atomic_output(final) as tmp:
        tmp.mkdir()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"a")
        (tmp / "b.txt").write_text("b")
    assert {f"{tmp}/sub/a.bin", f"{tmp}/b.txt", f"{tmp}/sub", str(tmp)} <= set(synced[:-1])
    assert synced[-1] == str(tmp_path)  # the directory holding the new entry, once it is there
    synced.clear()
    atomic_write_text(tmp_path / "one.txt", "x")
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".tmp-one.txt-")) and synced[1] == str(tmp_path)


def test_temporaries_carry_host_pid_and_a_random_part(tmp_path):
    """pids repeat across the hosts of a cluster on shared storage; two writers in one process differ too."""
    import os
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40]
    final = tmp_path / "out"
    with atomic_output(final) as a, atomic_output(final) as b:
        a.write_text("a")
        b.write_text("b")
        for t in (a, b):
            assert re.fullmatch(rf"\.tmp-out-{re.escape(host)}-{os.getpid()}-[0-9a-f]{{8}}", t.name), t.name
        assert a != b and a.read_text() == "a"  # the second writer did not clear the first one's temporary
    assert final.read_text() == "a"  # the outer block finished last
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_what_a_killed_writer_left_is_swept_but_a_live_ones_is_not(tmp_path):
    import os
    import re
    import socket
    import subprocess
    import sys

    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited: its pid is free (reuse within this test is not a concern)
    stale = tmp_path / f".tmp-out-{host}-{dead_pid}-0123abcd"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"half")
    live = tmp_path / f".tmp-out-{host}-{os.getppid()}-89abcdef"  # our parent: alive
    live.mkdir()
    other_host = tmp_path / f".tmp-out-elsewhere-{dead_pid}-0123abcd"  # a pid on another host says nothing here
    other_host.mkdir()
    atomic_write_text(tmp_path / "out", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other_host.name])


def test_the_evidence_flow_replaces_a_pools_results_whole(tmp_path, monkeypatch):
    """flows.evidence used to copy into results/evidence/<pool>/ in place, leaving an older run's files beside."""
    import subprocess

    from flows import evidence

    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "OUT", tmp_path / "results" / "evidence")
    monkeypatch.setattr(evidence, "run_retrying", lambda *a, **k: None)  # the experiment itself is not the point
    monkeypatch.setattr(subprocess, "run", lambda cmd, cwd: subprocess.CompletedProcess(cmd, 0))
    compare = tmp_path / "results" / "compare"
    compare.mkdir(parents=True)
    (tmp_path / "results" / "sweep").mkdir()
    (tmp_path / "results" / "sweep" / "sweep.json").write_text('{"chosen_learning_rate": 0.001}')
    (compare / "evidence.md").write_text("new verdicts\n")
    dest = evidence.result_dir("clean")
    dest.mkdir(parents=True)
    (dest / "evidence.md").write_text("old verdicts\n")
    (dest / "table.md").write_text("a table compare no longer writes\n")
    evidence.run_pool({"pools": {"clean": {}}}, "clean")
    assert sorted(p.name for p in dest.iterdir()) == ["evidence.md", "run.json", "sweep.json"]
    assert (dest / "evidence.md").read_text() == "new verdicts\n"
    assert [p.name for p in dest.parent.iterdir()] == ["clean"]


def test_the_evidence_flow_sweeps_first_then_freezes_the_chosen_rate_for_every_selector(tmp_path, monkeypatch):
    from flows import evidence

    ran: list[list[str]] = []
    monkeypatch.setattr(evidence, "ROOT", tmp_path)
    monkeypatch.setattr(evidence, "OUT", tmp_path / "results" / "evidence")
    monkeypatch.setattr(evidence, "run_retrying", lambda cmd, *a, **k: ran.append(cmd))
    (tmp_path / "results" / "sweep").mkdir(parents=True)
    (tmp_path / "results" / "sweep" / "sweep.json").write_text('{"chosen_learning_rate": 0.0003}')
    evidence.run_pool({"overrides": {"select.seeds": [0, 1]}, "pools": {"clean": {}}}, "clean")
    assert [cmd[3] for cmd in ran] == ["sweep", "compare"]
    assert "++finetune.train.learning_rate=0.0003" in ran[1] and not any("learning_rate" in a for a in ran[0])
    ran.clear()  # a rate given by the profile was chosen elsewhere: no sweep
    evidence.run_pool({"pools": {"clean": {"finetune.train.learning_rate": 1e-4}}}, "clean")
    assert [cmd[3] for cmd in ran] == ["compare"]
