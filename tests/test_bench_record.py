"""A bench's --out file: the command that made it (without --out), then exactly what the run printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_report_file_holds_the_command_and_the_printed_lines_even_when_the_run_fails(tmp_path):
    script = tmp_path / "probe.py"  # a bench outside the project is named by its file name alone
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'bench')!r})\nfrom record import record_to\n"
        "record_to(__import__('pathlib').Path(sys.argv[sys.argv.index('--out') + 1]))\n"
        "print('row 1')\nprint('row 2', flush=True)\nsys.exit(int(sys.argv[1]))\n"
    )
    for code in (0, 1):
        out = tmp_path / f"report-{code}.txt"
        proc = subprocess.run(
            [sys.executable, str(script), str(code), "--out", str(out), "--gib", "0.5"],
            capture_output=True, text=True, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == code and proc.stdout == "row 1\nrow 2\n", proc.stderr
        assert out.read_text() == f"$ python probe.py {code} --gib 0.5\nrow 1\nrow 2\n"
        assert not list(tmp_path.glob(".tmp-*"))  # written whole, through atomic_output


def test_a_bench_in_the_project_is_named_by_its_path_and_out_is_left_out(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from record import command_line

    argv = [str(ROOT / "bench" / "memory_bench.py"), "--gib", "2", "--out", "results/bench/m.txt", "--limit=1.5"]
    assert command_line(argv) == "$ python bench/memory_bench.py --gib 2 --limit=1.5"
    assert command_line([*argv[:3], "--out=x.txt"]) == "$ python bench/memory_bench.py --gib 2"
