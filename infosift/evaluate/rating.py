"""The judge's verdict in its reply: MT-Bench asks for '[[x]]' with x in 1..10.

Its own module so that every judge (local model, API server) parses the same way without importing each other.
"""

from __future__ import annotations

import re

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_rating(text: str) -> float | None:
    """The last '[[x]]' with 1 <= x <= 10 in the judge's reply; None when there is none."""
    for m in reversed(_RATING.findall(text)):
        if 1.0 <= float(m) <= 10.0:
            return float(m)
    return None
