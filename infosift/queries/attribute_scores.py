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

from infosift.errors import DataError


def _finite(value: object) -> float | None:
    """``value`` (a number, or a string holding one) as a finite float; None for a bool, NaN, inf or anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def combine_attributes(table: dict, ids: list[str], weights: dict[str, float] | None) -> np.ndarray:
    """(N,) float64 score per id: Σ_a weights[a]·table[id][a]; a DataError (a ValueError) for anything missing."""
    if not weights:
        raise DataError("attribute weights are empty: name at least one attribute and its weight")
    if not isinstance(weights, dict) or any(_finite(w) is None for w in weights.values()):
        raise DataError(f"attribute weights must be a mapping {{attribute: finite number}}, got {weights!r}")
    missing = [i for i in ids if i not in table]
    if missing:
        raise DataError(f"{len(missing)} of {len(ids)} ids have no scores, e.g. {', '.join(missing[:3])}")
    out = np.zeros(len(ids))
    for n, i in enumerate(ids):
        row = table[i]
        for attr, w in weights.items():
            if attr not in row:
                raise DataError(f"id {i} has no attribute {attr!r} (has: {', '.join(sorted(row)) or 'none'})")
            value = _finite(row[attr])
            if value is None:
                raise DataError(f"id {i} attribute {attr!r} is not a finite number: {row[attr]!r}")
            out[n] += float(w) * value
    return out


def load_attribute_scores(path: str | os.PathLike, ids: list[str], weights: dict[str, float] | None) -> np.ndarray:
    """Read ``{id: {attr: value}}`` JSON and combine it with ``weights`` for the given ids; errors name the file."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise DataError(f"{path}: expected a JSON object {{id: {{attribute: value}}}}")
    try:
        return combine_attributes(table, ids, weights)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
