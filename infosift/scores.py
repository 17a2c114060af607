"""Per-example query scores for GIP: multi-attribute (MA) judge scores from a user file.

The file is JSON ``{id: {attribute: value}}``; the score of an example is the weighted sum
Σ_a w_a·value_a over the attributes named in ``weights``. Scores are aligned to the feature ids
so a missing or extra id can never shift every score by one row silently.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def combine_attributes(table: dict, ids: list[str], weights: dict[str, float] | None) -> np.ndarray:
    """(N,) float64 score per id: Σ_a weights[a]·table[id][a]; clear errors for anything missing."""
    if not weights:
        raise ValueError("attribute weights are empty: name at least one attribute and its weight")
    missing = [i for i in ids if i not in table]
    if missing:
        raise ValueError(f"{len(missing)} of {len(ids)} ids have no scores, e.g. {', '.join(missing[:3])}")
    out = np.zeros(len(ids))
    for n, i in enumerate(ids):
        row = table[i]
        for attr, w in weights.items():
            if attr not in row:
                raise ValueError(f"id {i} has no attribute {attr!r} (has: {', '.join(sorted(row)) or 'none'})")
            value = float(row[attr])
            if not math.isfinite(value):
                raise ValueError(f"id {i} attribute {attr!r} is not finite: {row[attr]!r}")
            out[n] += float(w) * value
    return out


def load_attribute_scores(path: str | os.PathLike, ids: list[str], weights: dict[str, float] | None) -> np.ndarray:
    """Read ``{id: {attr: value}}`` JSON and combine it with ``weights`` for the given ids."""
    table = json.loads(Path(path).read_text())
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"{path}: expected a JSON object {{id: {{attribute: value}}}}")
    return combine_attributes(table, ids, weights)
