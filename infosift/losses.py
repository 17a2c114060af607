"""Token-weighted SFT losses: NLL, DFT and InfoSFT differ only in the (stop-gradient) weight of -log q.

With q = π_θ(y_t | x, y_<t), the current model's probability of the target token:

    nll:      w(q) = 1
    dft:      w(q) = q                                   (Wu et al. 2025)
    infosift: w(q) = q · max(0, 1 − logit(q)/logit(P))   (InfoSFT, P = 0.93 → logit(P) ≈ 2.587)

InfoSFT switches off tokens the model already predicts with q >= P and, relative to DFT, up-weights
low- and medium-confidence tokens. The weight is always detached, so the gradient is w(q)·∇(−log q).

Each loss is its weight function w(q, P), registered by name (``register_loss``): a new loss is one
decorated function here, and the fine-tune stage takes its list of loss names from ``available_losses()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from infosift.errors import InfosiftError

TokenWeight = Callable[[torch.Tensor, float], torch.Tensor]  # (detached q, P) -> w(q), same shape as q

_LOSSES: dict[str, TokenWeight] = {}


def register_loss(name: str) -> Callable[[TokenWeight], TokenWeight]:
    """Decorator: make a token-weight function w(q, P) available as loss ``name``."""

    def wrap(fn: TokenWeight) -> TokenWeight:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        _LOSSES[name] = fn
        return fn

    return wrap


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def get_loss(name: str) -> TokenWeight:
    """The token-weight function of loss ``name``; an unknown name is an error listing the known ones."""
    if name not in _LOSSES:
        raise InfosiftError(f"unknown loss_type {name!r}; expected one of {', '.join(available_losses())}")
    return _LOSSES[name]


@register_loss("nll")
def nll_weight(q: torch.Tensor, P: float) -> torch.Tensor:
    """w = 1: plain cross-entropy."""
    return torch.ones_like(q)


@register_loss("dft")
def dft_weight(q: torch.Tensor, P: float) -> torch.Tensor:
    """w = q (DFT): down-weights tokens the model finds unlikely."""
    return q.clone()


@register_loss("infosift")
def infosift_weight(q: torch.Tensor, P: float) -> torch.Tensor:
    """w = q·max(0, 1 − logit(q)/logit(P)): off for q >= P, above DFT for low and medium q."""
    if not 0.5 < P < 1.0:
        raise ValueError(f"infosift needs 0.5 < P < 1 (logit(P) > 0), got {P}")
    tiny = torch.finfo(q.dtype).tiny
    qc = q.clamp(min=tiny, max=1.0)  # q = 0 would give 0·inf; q = 1 gives logit = inf and weight 0
    logit = torch.log(qc) - torch.log1p(-qc)
    return qc * torch.relu(1.0 - logit / math.log(P / (1.0 - P)))


def token_weight(q: torch.Tensor, loss_type: str, P: float = 0.93) -> torch.Tensor:
    """Detached weight of each token's −log q (same shape as q)."""
    return get_loss(loss_type)(q.detach(), P)


def weighted_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "nll",
    P: float = 0.93,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Weighted mean of −log q over response tokens: Σ_t m_t·sg[w(q_t)]·(−log q_t) / N, N = Σ_t m_t.

    ``normalizer`` replaces N where the mean runs over more tokens than this batch holds: the trainer passes the
    response tokens of the whole optimizer step (every accumulation step, every process), so that summing the
    micro-batch losses gives the loss of the one large batch.

    Already shifted: ``logits[..., t, :]`` predicts ``labels[..., t]`` (pass ``logits[:, :-1]``,
    ``input_ids[:, 1:]``, ``response_mask[:, 1:]``). Computed in float32 whatever the logits dtype.
    Masked positions may hold any label (e.g. -100); a batch with no response token gives 0.
    """
    mask = mask.to(torch.float32)
    safe = torch.where(mask > 0, labels, torch.zeros_like(labels))
    logq = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), safe.reshape(-1), reduction="none")
    logq = logq.view(labels.shape)
    w = token_weight(logq.exp(), loss_type, P)
    n = mask.sum() if normalizer is None else torch.as_tensor(normalizer, dtype=torch.float32, device=mask.device)
    return -(w * logq * mask).sum() / n.clamp(min=1.0)
