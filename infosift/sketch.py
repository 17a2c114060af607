"""FisherSketch: a 16 KB random-feature signature of a corpus's head Fisher, to rank source corpora.

For a linear softmax head, a token with pre-head activation a (d) and error e = softmax − onehot (K)
has head gradient e aᵀ, so the head Fishers of two corpora S, T have the inner product

    ⟨F_S, F_T⟩ = E_{(a,e)~S, (a',e')~T} [ (aᵀa')² (eᵀe')² ]

and their alignment is its cosine. FisherSketch estimates it with m random features

    ψ_l(a, e) = (r1_lᵀa)(r2_lᵀa)(s1_lᵀe)(s2_lᵀe) / √m,   E[ψ(a,e)ᵀψ(a',e')] = (aᵀa')²(eᵀe')²

where r1, r2, s1, s2 are mutually independent vectors of iid Rademacher signs. Each is one row of an
SRHT, H·diag(σ) with H the ±1 Walsh-Hadamard matrix and σ random signs: every row of it is a vector
of iid signs, so every ψ_l is exactly unbiased (rows are dependent across l, which changes only the
variance). One fast Walsh-Hadamard transform gives all rows at once, so a token costs
O(K' log K' + d' log d' + m) with K', d' the next powers of two (49,152 → 65,536); where m exceeds
K' (or d'), ceil(m/K') independent SRHT blocks are stacked. Nothing of size K², d·K or d·K·m exists.

State: the running sum of ψ (m float64 = 32 KB) and a token count; the projections are regenerated
from the seed (two sign vectors per side). signature() = mean ψ over tokens, m float32 (16 KB).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from infosift.chat import collate, encode_record
from infosift.errors import SketchError


def hadamard(n: int) -> torch.Tensor:
    """The n×n ±1 Sylvester-Hadamard matrix (n a power of two), H_2n = [[H, H], [H, -H]]."""
    h = torch.ones(1, 1)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


_RADIX = hadamard(16)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform over the last axis (a power of two), O(n log n).

    H_n = H_16 ⊗ H_16 ⊗ … (Sylvester order), so one small 16×16 matmul per 4-bit digit of the
    index does it: a radix-16 butterfly, several times faster on CPU than radix-2 steps.
    """
    n, shape, h = x.shape[-1], x.shape, 1
    while h < n:
        r = min(16, n // h)  # the top-left r×r block of H_16 is H_r
        x = torch.matmul(_RADIX[:r, :r].to(x.dtype), x.reshape(-1, n // (r * h), r, h))
        h *= r
    return x.reshape(shape)


class _SignedHadamard:
    """m rows of ``blocks`` stacked SRHTs of a width-n input: rows of iid Rademacher signs."""

    def __init__(self, n: int, m: int, gen: torch.Generator):
        self.n, self.width = n, 1 << max(0, (n - 1).bit_length())
        self.blocks = math.ceil(m / self.width)
        self.signs = torch.randint(0, 2, (self.blocks, self.width), generator=gen).float() * 2 - 1
        self.rows = torch.randperm(self.blocks * self.width, generator=gen)[:m]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B, m) float64: s_lᵀx for every row l."""
        padded = torch.nn.functional.pad(x, (0, self.width - self.n))
        proj = fwht(padded[:, None, :] * self.signs).reshape(len(x), -1)
        return proj[:, self.rows].double()


class FisherSketch:
    """Streaming mean of ψ(a, e) over a corpus's tokens; ``update`` any number of times."""

    def __init__(self, d: int, vocab_size: int, m: int = 4096, seed: int = 0, max_chunk_elems: int = 2**24):
        gen = torch.Generator().manual_seed(int(seed))
        self.d, self.vocab_size, self.m = int(d), int(vocab_size), int(m)
        self.r1, self.r2 = _SignedHadamard(d, m, gen), _SignedHadamard(d, m, gen)
        self.s1, self.s2 = _SignedHadamard(vocab_size, m, gen), _SignedHadamard(vocab_size, m, gen)
        self.chunk = max(1, max_chunk_elems // (self.s1.blocks * self.s1.width))  # tokens per FWHT pass
        self.total = np.zeros(m, dtype=np.float64)
        self.count = 0

    def update(self, activations, errors) -> None:
        """Add tokens: activations (B, d), errors (B, K) = softmax − onehot, one row per token."""
        a = torch.as_tensor(activations).detach().float().cpu()
        e = torch.as_tensor(errors).detach().float().cpu()
        if a.ndim != 2 or e.ndim != 2 or a.shape[1] != self.d or e.shape[1] != self.vocab_size or len(a) != len(e):
            raise ValueError(
                f"need activations (B, {self.d}) and errors (B, {self.vocab_size}), got {a.shape}, {e.shape}"
            )
        for i in range(0, len(a), self.chunk):
            ac, ec = a[i : i + self.chunk], e[i : i + self.chunk]
            psi = self.r1(ac) * self.r2(ac) * self.s1(ec) * self.s2(ec) / math.sqrt(self.m)
            self.total += psi.sum(0).numpy()
        self.count += len(a)

    def signature(self) -> np.ndarray:
        """(m,) float32: the mean ψ over every token seen (16 KB at m = 4096)."""
        if self.count == 0:
            raise SketchError("empty sketch: no tokens were added")
        return (self.total / self.count).astype(np.float32)


def alignment(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Cosine of two signatures: the estimated head Fisher alignment of the two corpora."""
    a, b = np.asarray(sig_a, np.float64), np.asarray(sig_b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def alignment_matrix(sigs: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Pairwise alignments of named signatures (for the heatmap)."""
    names = list(sigs)
    return names, np.array([[alignment(sigs[x], sigs[y]) for y in names] for x in names])


def rank_sources(target_sig: np.ndarray, source_sigs: dict[str, np.ndarray]) -> list[dict]:
    """Sources sorted by alignment with the target, best first: [{rank, source, alignment}]."""
    scored = sorted(((alignment(target_sig, s), name) for name, s in source_sigs.items()), reverse=True)
    return [{"rank": r + 1, "source": name, "alignment": a} for r, (a, name) in enumerate(scored)]


def _batch(tokenizer, records: list[dict], max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids, attention mask and 'position t predicts an assistant token' mask."""
    enc = [encode_record(tokenizer, r, max_length) for r in records]
    batch = collate(enc, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    predicts = torch.zeros_like(batch["response_mask"])
    predicts[:, :-1] = batch["response_mask"][:, 1:]  # position t predicts token t+1
    return batch["input_ids"], batch["attention_mask"], predicts


@torch.no_grad()
def sketch_corpus(
    model, tokenizer, records: list[dict], m: int = 4096, seed: int = 0, batch_size: int = 8, max_length: int = 512
) -> np.ndarray:
    """One streaming pass: the FisherSketch signature of ``records`` under ``model``.

    a = the last hidden state after the final norm (the lm_head input) at each position that
    predicts a response token; e = softmax(lm_head(a)) − onehot(next token). Assumes logits are
    lm_head(a) as in Llama-style models (no logit soft-capping). Use the same seed for every
    corpus that will be compared.
    """
    model.eval()
    head, base = model.get_output_embeddings(), model.base_model
    sketch = FisherSketch(head.in_features, head.out_features, m=m, seed=seed)
    device = next(model.parameters()).device
    for i in range(0, len(records), batch_size):
        ids, attn, predicts = _batch(tokenizer, records[i : i + batch_size], max_length)
        ids, attn, predicts = ids.to(device), attn.to(device), predicts.to(device)
        hidden = base(input_ids=ids, attention_mask=attn).last_hidden_state
        acts, nxt = hidden[predicts], ids[:, 1:][predicts[:, :-1]]
        for j in range(0, len(acts), 256):  # bound the (tokens, K) logits block
            a, y = acts[j : j + 256], nxt[j : j + 256]
            err = torch.softmax(head(a).float(), dim=-1)
            err[torch.arange(len(y), device=err.device), y] -= 1.0
            sketch.update(a, err)
    return sketch.signature()
