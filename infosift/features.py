"""Ragged token embeddings: the one data structure every selector reads.

Sentence i owns rows ``values[offsets[i]:offsets[i+1]]`` (its tokens' pre-logit embeddings).
Optional, written by embed:
- ``costs`` (N,) int64: prompt + response tokens of each example under the chat template, i.e. what a
  fine-tune pays for it (token budgets count these; default: ``lengths``);
- ``p_next`` and ``p_sqnorm`` (total_tokens,) float32, ragged like ``values``: the base model's
  probability of the actual next token, and sum_k p_k^2 of its next-token distribution (FisherSFT's
  information weights, see select/fishersft.py).
On disk a TokenFeatures is a directory of plain ``.npy`` files plus ``ids.json`` (no pickle), so a
large pool can be memory-mapped instead of read into RAM.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infosift.errors import FeaturesError

VALUES, OFFSETS, IDS = "values.npy", "offsets.npy", "ids.json"
COSTS, P_NEXT, P_SQNORM = "costs.npy", "p_next.npy", "p_sqnorm.npy"


@dataclass
class TokenFeatures:
    """values: (total_tokens, d) float; offsets: (N+1,) int64 with offsets[0]=0; ids: N stable ids."""

    values: np.ndarray
    offsets: np.ndarray
    ids: list[str]
    costs: np.ndarray | None = None
    p_next: np.ndarray | None = None
    p_sqnorm: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.values.ndim != 2:
            raise ValueError(f"values must be 2-D (total_tokens, d), got shape {self.values.shape}")
        if self.offsets.ndim != 1 or len(self.offsets) != len(self.ids) + 1:
            raise ValueError(f"offsets must have N+1={len(self.ids) + 1} entries, got {self.offsets.shape}")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.values):
            raise ValueError("offsets must start at 0 and end at len(values)")
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")
        if self.costs is not None:
            self.costs = np.asarray(self.costs, dtype=np.int64)
            if self.costs.shape != (len(self.ids),):
                raise ValueError(f"costs must have shape ({len(self.ids)},), got {self.costs.shape}")
            if len(self.costs) and self.costs.min() < 1:
                raise ValueError("costs must be >= 1 token per example")
        for name in ("p_next", "p_sqnorm"):
            stat = getattr(self, name)
            if stat is not None and np.shape(stat) != (len(self.values),):
                raise ValueError(f"{name} must have one entry per token row ({len(self.values)}), got {np.shape(stat)}")

    # -- shape -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per sentence, (N,) int64."""
        return np.diff(self.offsets)

    @property
    def token_costs(self) -> np.ndarray:
        """What each example costs a fine-tune, (N,) int64: ``costs`` when embed wrote them, else lengths."""
        return self.costs if self.costs is not None else np.maximum(self.lengths, 1)

    def sentence(self, i: int) -> np.ndarray:
        """X_i: the (M_i, d) token matrix of sentence i."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def mean_pooled(self, chunk_bytes: int = 1 << 28) -> np.ndarray:
        """(N, d) float32 mean of each sentence's tokens; an empty sentence pools to zeros.

        Reads about ``chunk_bytes`` of float32 token rows at a time (whole sentences), so a memory-mapped pool is
        never copied whole: peak memory is the (N, d) result plus one chunk, not 2x the file (density,
        sentence_od and GIP pool through here).
        """
        n, offsets, lengths = len(self), self.offsets, self.lengths
        out = np.zeros((n, self.dim), dtype=np.float32)
        chunk_rows = max(1, chunk_bytes // max(4 * self.dim, 1))
        s = 0
        while s < n:
            last = int(np.searchsorted(offsets, offsets[s] + chunk_rows, side="right")) - 1  # sentences that fit
            e = min(max(last, s + 1), n)
            lo, hi = int(offsets[s]), int(offsets[e])
            full = np.flatnonzero(lengths[s:e])  # an empty sentence has no start row reduceat could use
            if len(full):
                vals = np.asarray(self.values[lo:hi], dtype=np.float32)
                sums = np.add.reduceat(vals, offsets[s:e][full] - lo, axis=0)
                out[s + full] = (sums / lengths[s:e][full][:, None]).astype(np.float32)
            s = e
        return out

    def subset(self, indices: np.ndarray | list[int]) -> TokenFeatures:
        """A new TokenFeatures holding only the given sentences, in the given order."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.lengths[idx])]).astype(np.int64)
        return TokenFeatures(
            np.ascontiguousarray(self.values[rows]),
            offsets,
            [self.ids[int(i)] for i in idx],
            costs=None if self.costs is None else self.costs[idx],
            p_next=None if self.p_next is None else np.asarray(self.p_next)[rows],
            p_sqnorm=None if self.p_sqnorm is None else np.asarray(self.p_sqnorm)[rows],
        )

    def view(self, indices: np.ndarray | list[int]) -> TokenFeatures:
        """subset() without the copy: the chosen sentences' token rows stay where they are (a memory-mapped file)
        and are gathered only as a selector reads them, sentence by sentence or chunk by chunk. GreeDi's parts and
        the quality filter select from views, so neither holds a second copy of the pool beside the mapped one."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.lengths[idx])]).astype(np.int64)
        return TokenFeatures(
            GatheredRows(self.values, rows),
            offsets,
            [self.ids[int(i)] for i in idx],
            costs=None if self.costs is None else self.costs[idx],
            p_next=None if self.p_next is None else np.asarray(self.p_next)[rows],  # one float a token row: small
            p_sqnorm=None if self.p_sqnorm is None else np.asarray(self.p_sqnorm)[rows],
        )

    def with_values(self, values: np.ndarray) -> TokenFeatures:
        """The same sentences, ids, costs and token stats over new token rows (e.g. reweighted)."""
        return TokenFeatures(values, self.offsets, self.ids, self.costs, self.p_next, self.p_sqnorm)

    def check_finite(self, chunk_bytes: int = 1 << 28) -> None:
        """Raise FeaturesError (a ValueError) naming the first sentence whose token rows or token stats
        (p_next, p_sqnorm) hold a NaN or Inf.

        Scans about ``chunk_bytes`` of float32 at a time, so a memory-mapped pool larger than RAM is checked
        in bounded memory instead of being read whole.
        """
        for name, arr in (("features", self.values), ("p_next", self.p_next), ("p_sqnorm", self.p_sqnorm)):
            if arr is None:
                continue
            row_bytes = 4 * int(np.prod(arr.shape[1:], dtype=np.int64))
            chunk_rows = max(1, chunk_bytes // max(row_bytes, 1))
            for start in range(0, len(arr), chunk_rows):
                finite = np.isfinite(np.asarray(arr[start : start + chunk_rows], dtype=np.float32))
                bad_rows = ~(finite.all(axis=1) if finite.ndim == 2 else finite)
                if bad_rows.any():
                    row = start + int(np.argmax(bad_rows))
                    i = int(np.searchsorted(self.offsets, row, side="right") - 1)
                    raise FeaturesError(f"{name} of sentence {i} (id {self.ids[i]}) contain NaN or Inf")

    # -- disk ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write values.npy, offsets.npy and ids.json into directory ``path`` (created)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / VALUES, np.ascontiguousarray(self.values), allow_pickle=False)
        np.save(out / OFFSETS, self.offsets, allow_pickle=False)
        (out / IDS).write_text(json.dumps(list(self.ids)))
        for name, arr in ((COSTS, self.costs), (P_NEXT, self.p_next), (P_SQNORM, self.p_sqnorm)):
            if arr is not None:
                np.save(out / name, np.ascontiguousarray(arr), allow_pickle=False)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> TokenFeatures:
        """Read a directory written by save(); ``mmap=True`` maps values instead of reading them."""
        src = Path(path)
        if not (src / VALUES).exists():
            raise FeaturesError(f"{src} is not a TokenFeatures directory (no {VALUES}); run embed")
        try:
            return cls._load(src, mmap)
        except (OSError, ValueError, EOFError) as e:  # truncated .npy, bad JSON, offsets that disagree
            raise FeaturesError(
                f"{src}: unreadable or inconsistent token features ({' '.join(str(e).split())}); rerun embed"
            ) from None

    @classmethod
    def _load(cls, src: Path, mmap: bool) -> TokenFeatures:
        """Read and check what a constructor cannot: dtypes (a cast would hide a wrong file) and ids."""
        values = np.load(src / VALUES, mmap_mode="r" if mmap else None, allow_pickle=False)
        offsets = np.load(src / OFFSETS, allow_pickle=False)
        ids = json.loads((src / IDS).read_text(encoding="utf-8"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{IDS} must hold a JSON list of string ids")
        seen: set[str] = set()
        for i in ids:
            if i in seen:
                raise ValueError(f"{IDS}: id {i!r} repeats")
            seen.add(i)

        def optional(name: str, mode: str | None) -> np.ndarray | None:
            return np.load(src / name, mmap_mode=mode, allow_pickle=False) if (src / name).exists() else None

        costs = optional(COSTS, None)
        p_next, p_sqnorm = optional(P_NEXT, "r" if mmap else None), optional(P_SQNORM, "r" if mmap else None)
        for name, arr, kind in (
            (VALUES, values, "f"),
            (OFFSETS, offsets, "iu"),
            (COSTS, costs, "iu"),
            (P_NEXT, p_next, "f"),
            (P_SQNORM, p_sqnorm, "f"),
        ):
            if arr is not None and arr.dtype.kind not in kind:
                want = "floating-point" if kind == "f" else "integer"
                raise ValueError(f"{name} must hold {want} numbers, got dtype {arr.dtype}")
        return cls(values, offsets, ids, costs=costs, p_next=p_next, p_sqnorm=p_sqnorm)

    @classmethod
    def from_list(cls, sentences: list[np.ndarray], ids: list[str] | None = None) -> TokenFeatures:
        """Build from a list of (M_i, d) arrays (handy in tests and small experiments)."""
        if not sentences:
            raise ValueError("need at least one sentence")
        d = sentences[0].shape[1]
        values = np.concatenate(sentences) if sentences else np.zeros((0, d))
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in sentences])]).astype(np.int64)
        return cls(values, offsets, ids if ids is not None else [str(i) for i in range(len(sentences))])


class GatheredRows:
    """Rows ``rows`` of a (total_tokens, d) array, read only when sliced: the values of TokenFeatures.view().

    A slice over rows that are consecutive in the base array is a slice of it (no copy of a memory-mapped file);
    any other index gathers just the rows it names. np.asarray() of the whole gathers every row (save()).
    """

    ndim = 2

    def __init__(self, base: np.ndarray, rows: np.ndarray) -> None:
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), int(base.shape[1]))
        self.dtype = base.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):  # noqa: ANN001, ANN204 (numpy's indexing)
        rows = self.rows[key]
        if isinstance(key, slice) and len(rows) and np.all(np.diff(rows) == 1):
            return self.base[int(rows[0]) : int(rows[-1]) + 1]
        return self.base[rows]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001
        out = np.asarray(self.base[self.rows])
        return out if dtype is None else out.astype(dtype)
