"""InfoSFT / DFT / NLL token weights: exact values, stop-gradient, and the masked weighted mean."""

from __future__ import annotations

import math

import pytest
import torch

from infosift.losses import token_weight, weighted_token_loss


def test_infosift_known_values():
    q = torch.tensor([0.5, 0.1, 0.9, 0.93, 0.95, 1.0], dtype=torch.float64)
    w = token_weight(q, "infosift", P=0.93)
    assert w[0].item() == pytest.approx(0.5, abs=1e-12)  # logit(0.5) = 0
    assert w[1].item() == pytest.approx(0.1 * (1 + math.log(9) / math.log(0.93 / 0.07)), rel=1e-12)
    assert w[1].item() == pytest.approx(0.185, abs=5e-4)
    assert w[2].item() == pytest.approx(0.136, abs=5e-4)
    assert w[3:].abs().max().item() < 1e-12  # q >= P: switched off


def test_infosift_small_q_is_finite_and_positive():
    w = token_weight(torch.tensor([0.0, 1e-30, 1e-8]), "infosift")
    assert torch.isfinite(w).all() and w[0] >= 0 and w[2] > 0


def test_nll_and_dft_weights():
    q = torch.rand(7)
    assert torch.equal(token_weight(q, "nll"), torch.ones(7))
    assert torch.equal(token_weight(q, "dft"), q)
    with pytest.raises(ValueError, match="loss_type"):
        token_weight(q, "focal")


def test_weight_is_stop_gradient():
    q = torch.tensor([0.2, 0.6], requires_grad=True)
    for kind in ("dft", "infosift"):
        assert not token_weight(q, kind).requires_grad


def _brute_loss(logits, labels, mask, loss_type):
    """Per-token loop: w(q)·(−log q) averaged over masked-in tokens, weight as a plain float."""
    total, count = torch.zeros(()), 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if not mask[b, t]:
                continue
            logq = torch.log_softmax(logits[b, t], -1)[labels[b, t]]
            q = logq.exp().item()
            logit = math.log(q / (1 - q))
            w = {"nll": 1.0, "dft": q, "infosift": q * max(0.0, 1 - logit / math.log(0.93 / 0.07))}[loss_type]
            total = total - w * logq
            count += 1
    return total / count


@pytest.mark.parametrize("loss_type", ["nll", "dft", "infosift"])
def test_weighted_loss_and_gradient_match_brute_force(loss_type):
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 5, 11)).requires_grad_()
    labels = torch.randint(0, 11, (2, 5))
    mask = torch.rand(2, 5) > 0.3
    labels[~mask] = -100  # HF-style ignore labels at masked positions must be harmless
    loss = weighted_token_loss(logits, labels, mask, loss_type)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = _brute_loss(ref_logits, labels, mask, loss_type)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_nll_equals_masked_cross_entropy_and_empty_mask_is_zero():
    torch.manual_seed(1)
    logits, labels = torch.randn(3, 4, 9), torch.randint(0, 9, (3, 4))
    mask = torch.ones(3, 4, dtype=torch.bool)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), labels.reshape(-1))
    assert weighted_token_loss(logits, labels, mask, "nll").item() == pytest.approx(ce.item(), rel=1e-6)
    assert weighted_token_loss(logits, labels, torch.zeros_like(mask), "infosift").item() == 0.0
