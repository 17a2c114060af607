"""The sketch stage's figure: a PNG of the alignment matrix, negative alignments included."""

from __future__ import annotations

import numpy as np

from infosift.plots import alignment_heatmap


def test_alignment_heatmap_writes_a_png(tmp_path):
    mat = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, -0.1], [0.2, -0.1, 1.0]])
    alignment_heatmap(["target", "a", "b"], mat, tmp_path / "alignment.png")
    data = (tmp_path / "alignment.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_not_computed_writes_a_png(tmp_path):
    from infosift.plots import not_computed

    not_computed("gsm8k_exact_match_strict", tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
