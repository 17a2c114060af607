"""Where a computation runs: the one device default of the library, and the one check that a device exists here.

Stages check their params.yaml device with ``torch_device`` when they start (stages/_common.check_device names the
parameter); the library checks it again where it loads a model, for callers that are not stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infosift.errors import DeviceError

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


def torch_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` (or the default, see pick_device) as a torch.device this machine has; else a DeviceError.

    Checked before any model is loaded: torch would otherwise fail deep inside loading with a traceback.
    """
    import torch

    if isinstance(device, str) and not device:
        raise DeviceError("device '' is empty (use cpu, cuda, cuda:N or mps, or leave it out for the default)")
    name = pick_device(device)
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"device {name!r} is not a torch device (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= n:
            raise DeviceError(f"device {name!r} is not available here ({n} CUDA devices)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {name!r}: infosift runs on cpu, cuda or mps")
    return dev
