"""FisherSketch against the exact head Fisher inner product / alignment at small d and K."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from infosift.chat import encode_pair
from infosift.sketch import (
    FisherSketch,
    alignment,
    alignment_matrix,
    fwht,
    hadamard,
    rank_sources,
    sketch_corpus,
)


def tokens(rng, n, d, k, temp=2.0):
    """(a, e) pairs with e = softmax(logits) − onehot(label), as a real head produces them."""
    a = rng.normal(size=(n, d))
    logits = temp * rng.normal(size=(n, k))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    e = p.copy()
    e[np.arange(n), rng.integers(0, k, n)] -= 1.0
    return a, e


def exact_fisher(a, e):
    """F = mean_t (a aᵀ) ⊗ (e eᵀ), built explicitly (only possible at tiny d, K)."""
    return np.mean([np.kron(np.outer(x, x), np.outer(y, y)) for x, y in zip(a, e, strict=True)], axis=0)


def cos(x, y):
    return float((x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y))


def sketch(a, e, seed, m=4096):
    s = FisherSketch(a.shape[1], e.shape[1], m=m, seed=seed)
    s.update(a, e)
    return s


def test_fwht_is_the_sylvester_hadamard_matrix():
    for n in (1, 2, 8, 32, 512):
        x = torch.randn(3, n, dtype=torch.float64)
        torch.testing.assert_close(fwht(x), x @ hadamard(n).double().T)
    h = hadamard(64)
    torch.testing.assert_close(h @ h.T, 64 * torch.eye(64))


def test_inner_product_is_unbiased_over_seeds():
    """Mean over seeds of sig_A·sig_B → E[(aᵀa')²(eᵀe')²]; the identity itself is checked on explicit F."""
    rng = np.random.default_rng(0)
    (a1, e1), (a2, e2) = tokens(rng, 6, 5, 7), tokens(rng, 6, 5, 7)
    exact = np.mean((a1 @ a2.T) ** 2 * (e1 @ e2.T) ** 2)
    np.testing.assert_allclose((exact_fisher(a1, e1) * exact_fisher(a2, e2)).sum(), exact, rtol=1e-10)
    est = np.array(
        [sketch(a1, e1, s).signature().astype(np.float64) @ sketch(a2, e2, s).signature() for s in range(30)]
    )
    se = est.std() / np.sqrt(len(est))
    assert abs(est.mean() - exact) < 4 * se + 1e-3 * exact, (est.mean(), exact, se)
    assert se < 0.1 * exact  # the check has teeth: a 10% bias would be seen


def test_alignment_close_to_exact_cosine():
    """One seed, m = 4096: cosines of corpora that differ in activations, errors or both."""
    rng = np.random.default_rng(1)
    a, e = tokens(rng, 40, 6, 9)
    corpora = {
        "same_dist": tokens(rng, 40, 6, 9),
        "shifted_acts": (a + 2.0, e),
        "sharper_errors": tokens(rng, 40, 6, 9, temp=6.0),
    }
    for name, (a2, e2) in corpora.items():
        exact = cos(exact_fisher(a, e), exact_fisher(a2, e2))
        est = alignment(sketch(a, e, 3).signature(), sketch(a2, e2, 3).signature())
        assert est == pytest.approx(exact, abs=0.05), name


def test_streaming_updates_equal_one_update_and_signature_is_16kb():
    rng = np.random.default_rng(2)
    a, e = tokens(rng, 50, 4, 10)
    whole = sketch(a, e, 0)
    parts = FisherSketch(4, 10, seed=0, max_chunk_elems=1)
    for i in range(0, 50, 7):
        parts.update(a[i : i + 7], e[i : i + 7])
    np.testing.assert_allclose(parts.signature(), whole.signature(), rtol=1e-5)
    sig = whole.signature()
    assert sig.dtype == np.float32 and sig.nbytes == 16 * 1024
    with pytest.raises(ValueError, match="empty"):
        FisherSketch(4, 10).signature()
    with pytest.raises(ValueError, match="need activations"):
        whole.update(a, e[:, :9])


def test_real_vocabulary_streams():
    """K = 49,152 (the bundled model's vocab): runs without K² or d·K·m memory, a few ms a token."""
    s = FisherSketch(64, 49152, m=4096, seed=0)
    e = torch.softmax(torch.randn(64, 49152), -1)
    e[torch.arange(64), torch.randint(0, 49152, (64,))] -= 1
    start = time.perf_counter()
    s.update(torch.randn(64, 64), e)
    assert time.perf_counter() - start < 10
    assert np.isfinite(s.signature()).all() and s.count == 64


def test_rank_sources_and_matrix():
    rng = np.random.default_rng(4)
    t, x, y = rng.normal(size=8), rng.normal(size=8), rng.normal(size=8)
    table = rank_sources(t, {"x": x, "self": 2 * t, "y": y})
    assert table[0] == {"rank": 1, "source": "self", "alignment": pytest.approx(1.0)}
    assert [r["rank"] for r in table] == [1, 2, 3]
    assert table[1]["alignment"] >= table[2]["alignment"]
    names, mat = alignment_matrix({"t": t, "x": x})
    assert names == ["t", "x"] and np.allclose(np.diag(mat), 1.0) and mat[0, 1] == pytest.approx(mat[1, 0])


def test_sketch_corpus_matches_per_record_reference(tiny_model_dir, gsm_records):
    """Batched, padded pass == a per-record pass that hooks the lm_head input and uses model logits."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = gsm_records[:10]
    sig = sketch_corpus(model, tok, records, m=256, seed=5, batch_size=4, max_length=64)

    head = model.get_output_embeddings()
    ref = FisherSketch(head.in_features, head.out_features, m=256, seed=5)
    seen = {}
    hook = head.register_forward_hook(lambda mod, inp, out: seen.update(a=inp[0]))
    with torch.no_grad():
        for r in records:
            enc = encode_pair(tok, r["prompt"], r["response"], 64)
            ids = torch.tensor([enc.input_ids])
            logits = model(ids).logits[0, :-1]
            pos = torch.tensor(enc.response_mask[1:])
            err = torch.softmax(logits[pos], -1)
            err[torch.arange(int(pos.sum())), ids[0, 1:][pos]] -= 1
            ref.update(seen["a"][0, :-1][pos], err)
    hook.remove()
    np.testing.assert_allclose(sig, ref.signature(), rtol=2e-3, atol=1e-6 * np.abs(sig).max())
    assert alignment(sig, ref.signature()) > 0.9999
