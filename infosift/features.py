"""Ragged token embeddings: the one data structure every selector reads.

Sentence i owns rows ``values[offsets[i]:offsets[i+1]]`` (its tokens' pre-logit embeddings).
On disk a TokenFeatures is a directory of plain ``.npy`` files plus ``ids.json`` (no pickle), so a
large pool can be memory-mapped instead of read into RAM.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VALUES, OFFSETS, IDS = "values.npy", "offsets.npy", "ids.json"


@dataclass
class TokenFeatures:
    """values: (total_tokens, d) float; offsets: (N+1,) int64 with offsets[0]=0; ids: N stable ids."""

    values: np.ndarray
    offsets: np.ndarray
    ids: list[str]

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

    def sentence(self, i: int) -> np.ndarray:
        """X_i: the (M_i, d) token matrix of sentence i."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def mean_pooled(self) -> np.ndarray:
        """(N, d) float32 mean of each sentence's tokens; an empty sentence pools to zeros."""
        vals = np.asarray(self.values, dtype=np.float32)
        sums = np.add.reduceat(vals, self.offsets[:-1], axis=0) if len(vals) else np.zeros((len(self), self.dim))
        lengths = self.lengths
        sums[lengths == 0] = 0.0  # reduceat returns the next row for empty segments
        return (sums / np.maximum(lengths, 1)[:, None]).astype(np.float32)

    def subset(self, indices: np.ndarray | list[int]) -> TokenFeatures:
        """A new TokenFeatures holding only the given sentences, in the given order."""
        idx = np.asarray(indices, dtype=np.int64)
        parts = [self.sentence(int(i)) for i in idx]
        values = np.concatenate(parts) if parts else np.zeros((0, self.dim), self.values.dtype)
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        return TokenFeatures(np.ascontiguousarray(values), offsets, [self.ids[int(i)] for i in idx])

    def check_finite(self) -> None:
        """Raise ValueError naming the first sentence that holds a NaN or Inf."""
        bad_rows = ~np.isfinite(np.asarray(self.values, dtype=np.float32)).all(axis=1)
        if bad_rows.any():
            row = int(np.argmax(bad_rows))
            i = int(np.searchsorted(self.offsets, row, side="right") - 1)
            raise ValueError(f"features of sentence {i} (id {self.ids[i]}) contain NaN or Inf")

    # -- disk ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write values.npy, offsets.npy and ids.json into directory ``path`` (created)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / VALUES, np.ascontiguousarray(self.values), allow_pickle=False)
        np.save(out / OFFSETS, self.offsets, allow_pickle=False)
        (out / IDS).write_text(json.dumps(list(self.ids)))

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> TokenFeatures:
        """Read a directory written by save(); ``mmap=True`` maps values instead of reading them."""
        src = Path(path)
        if not (src / VALUES).exists():
            raise FileNotFoundError(f"{src} is not a TokenFeatures directory (no {VALUES})")
        values = np.load(src / VALUES, mmap_mode="r" if mmap else None, allow_pickle=False)
        offsets = np.load(src / OFFSETS, allow_pickle=False)
        ids = json.loads((src / IDS).read_text())
        return cls(values, offsets, ids)

    @classmethod
    def from_list(cls, sentences: list[np.ndarray], ids: list[str] | None = None) -> TokenFeatures:
        """Build from a list of (M_i, d) arrays (handy in tests and small experiments)."""
        if not sentences:
            raise ValueError("need at least one sentence")
        d = sentences[0].shape[1]
        values = np.concatenate(sentences) if sentences else np.zeros((0, d))
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in sentences])]).astype(np.int64)
        return cls(values, offsets, ids if ids is not None else [str(i) for i in range(len(sentences))])
