"""The front door stays a front door, and the docs speak of what infosift does, not of how it was built."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIARY = re.compile(r"\b(sessions?|issue \d+|this task|was lent|(first|second|third) round)\b", re.IGNORECASE)


def test_readme_is_at_most_12_kb_and_links_the_docs_index():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    assert "docs/README.md" in text and (ROOT / "docs" / "README.md").exists()


def test_readme_and_docs_do_not_read_as_a_diary():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    hits = [f"{p.name}:{i}: {line.strip()}" for p in pages for i, line in enumerate(p.read_text().splitlines(), 1)
            if DIARY.search(line)]  # fmt: skip
    assert not hits, hits


def test_every_docs_page_is_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    assert all(p.name in index for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")


def test_result_tables_in_the_docs_match_their_result_files():
    """Every `<!-- table: FILE -->` block is what `python docs/tables.py` generates from FILE now."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "tables.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    assert sum(p.read_text().count("<!-- table: ") for p in pages) >= 1  # the check has something to check
