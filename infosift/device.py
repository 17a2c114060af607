"""Where a computation runs when the caller does not say: the one device default of the library."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(device: str | torch.device | None = None) -> str:
    """``device`` as a torch device string ('cpu', 'cuda', 'cuda:1'), or CUDA when available, else CPU.

    A string, not a torch.device: callers compare it with 'cpu' and hand it to torch, transformers and
    lm-eval, which all take strings.
    """
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
