"""Seeded contamination of a record pool: make a known share of the examples bad.

Why: on a clean, curated pool (GSM8K) every example is good and a random subset is hard to beat; the case
where selection should matter most in practice is a pool with bad examples in it. Contaminating a known
share, with the altered ids on record, lets an experiment ask both "does the selector's model get better"
and "how many bad examples did it pick".

Modes, the bad share split evenly over them (remainder to the first modes in order):
- ``swap``: the response of another contaminated record (a derangement: no record keeps its own response,
  nor an identical one); needs at least 2 swapped records.
- ``truncate``: the first third of the response's words (at least one word), or of its characters when it
  has one word; always strictly shorter. Responses of one character cannot be truncated and are never drawn.

Only the response (a conversation's last assistant turn) is altered. An altered record gets the content id
of its new conversation (``infosift.data.replace_response``) and keeps its other fields and its place in the
list. A draw whose new ids would collide with an existing id (a swap between two records of the same prompt, a
truncation equal to another record) is redrawn from the same seeded Generator, so the result stays
reproducible and every id stays unique.
"""

from __future__ import annotations

import numbers
import re

import numpy as np

from infosift.data import replace_response

MODES = ("swap", "truncate")
MAX_DRAWS = 100


def truncate_text(text: str) -> str:
    """The first third of the words (>= 1 word), or of the characters for a single word: strictly shorter."""
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    if len(ends) > 1:
        return text[: ends[max(1, len(ends) // 3) - 1]]
    return text[: max(1, len(text) // 3)]


def mode_counts(n_bad: int, modes: tuple[str, ...]) -> dict[str, int]:
    """Split n_bad evenly over modes; a lone swap (which has no partner) goes to another mode."""
    counts = {m: n_bad // len(modes) + (i < n_bad % len(modes)) for i, m in enumerate(modes)}
    if counts.get("swap") == 1:
        others = [m for m in modes if m != "swap"]
        if not others:
            raise ValueError("swap needs at least 2 contaminated records (raise share or add a mode)")
        counts["swap"], counts[others[0]] = 0, counts[others[0]] + 1
    return counts


def _check(records: list[dict], share: float, modes: tuple[str, ...]) -> None:
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 <= share < 1:
        raise ValueError(f"contamination share must be a number in [0, 1), got {share!r}")
    if not modes:
        raise ValueError("contamination needs at least one mode")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown contamination mode {unknown[0]!r}; known: {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"contamination modes repeat: {list(modes)}")


def _draw(records: list[dict], counts: dict[str, int], rng: np.random.Generator) -> dict[int, tuple[str, str]]:
    """One draw: {index: (new_response, mode)}, or {} when it breaks a rule (then the caller redraws)."""
    truncatable = [i for i, r in enumerate(records) if len(r["response"]) >= 2]
    if counts.get("truncate", 0) > len(truncatable):
        raise ValueError(f"only {len(truncatable)} records have a response long enough to truncate")
    trunc = rng.choice(truncatable, size=counts.get("truncate", 0), replace=False).tolist()
    rest = np.setdiff1d(np.arange(len(records)), trunc)
    swap = rng.choice(rest, size=counts.get("swap", 0), replace=False).tolist()
    altered = {i: (truncate_text(records[i]["response"]), "truncate") for i in trunc}
    donors = rng.permutation(swap).tolist()
    for i, j in zip(swap, donors, strict=True):
        if records[i]["response"] == records[j]["response"]:  # covers i == j: not a derangement
            return {}
        altered[i] = (records[j]["response"], "swap")
    return altered


def contaminate(
    records: list[dict], share: float, seed: int, modes: tuple[str, ...] = MODES
) -> tuple[list[dict], dict]:
    """A copy of ``records`` with round(share * N) of them made bad, and a report of what was done.

    Report: {"share", "seed", "modes", "n": number altered, "ids": {new_id: mode}}.
    """
    modes = tuple(modes)
    _check(records, share, modes)
    n_bad = int(share * len(records) + 0.5)
    report = {"share": float(share), "seed": int(seed), "modes": list(modes), "n": 0, "ids": {}}
    if n_bad == 0:
        return list(records), report
    counts = mode_counts(n_bad, modes)
    rng = np.random.default_rng(seed)
    old_ids = [r["id"] for r in records]
    for _ in range(MAX_DRAWS):
        altered = _draw(records, counts, rng)
        if not altered:
            continue
        new = {i: replace_response(records[i], resp) for i, (resp, _) in altered.items()}
        new_ids = {i: rec["id"] for i, rec in new.items()}
        kept = {old_ids[i] for i in range(len(records)) if i not in altered}
        taken = set(new_ids.values())
        if len(taken) == len(new_ids) and not taken & kept and not taken & {old_ids[i] for i in altered}:
            break
    else:
        raise ValueError(f"no contamination of {n_bad} records with unique new ids in {MAX_DRAWS} draws")
    out = [new[i] if i in altered else r for i, r in enumerate(records)]
    report |= {"n": len(altered), "ids": {new_ids[i]: altered[i][1] for i in sorted(altered)}}
    return out, report
