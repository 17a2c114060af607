"""FisherSFT's synthetic experiment: does picking sentences by token-level Fisher information fit a
multinomial logistic model better than picking them at random or by their mean embedding?

Setting (FisherSFT §5.1 as far as it is verified: d = 10 features, L = 20 classes). A true
``Θ ∈ R^{d×L}`` labels every token: ``y ~ Categorical(softmax(Θᵀx))``. A pool of N sentences of M
tokens each is drawn from a heterogeneous generator (see ``make_sentences``); a selector picks n
sentences from the token features alone (never the labels); we fit the ridge MLE on the chosen
tokens and measure how far its class probabilities are from the truth on fresh tokens.

Every sentence has exactly M tokens, so n sentences are n·M labelled tokens for every selector:
selectors differ only in *which* tokens they buy, never in how many.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from infosift.compare import to_markdown
from infosift.features import TokenFeatures


@dataclass
class Problem:
    """One seed's world: the truth, the labelled pool to select from, and fresh test tokens."""

    theta: np.ndarray  # (d, L) true parameters
    pool: TokenFeatures  # N sentences x M tokens, (N*M, d)
    labels: np.ndarray  # (N*M,) int64 label of every pool token
    test_x: np.ndarray  # (T_test, d) fresh tokens from the same generator


# -- the generator ---------------------------------------------------------------------------------
def make_sentences(
    rng: np.random.Generator,
    n: int,
    m: int,
    d: int,
    scale_range: tuple[float, float] = (0.1, 2.0),
) -> np.ndarray:
    """(n, m, d) token features. Sentence i: ``x_ij = s_i (ρ_i u_i + sqrt(1-ρ_i²) z_ij)``.

    - ``s_i`` log-uniform in ``scale_range``: sentences differ in how much they can teach (the
      Fisher information of a token grows like ||x||² until the softmax saturates).
    - ``u_i`` a random unit "topic" direction, ``ρ_i ~ U(0, 1)`` how coherent the sentence is, and
      ``z_ij ~ N(0, I/d)`` token-level noise (so ||x_ij|| ≈ s_i whatever ρ_i).
    A coherent sentence (ρ≈1) repeats one direction: its mean embedding is large and its tokens
    span one dimension. An incoherent one (ρ≈0) has tokens spread over all directions: its mean is
    ≈ 0 (norm ~ s/√M) yet its tokens carry as much information as the coherent one's, in d
    directions instead of one. Mean pooling (SentenceOD) cannot see that; summing token outer
    products (FisherSFT) can.
    """
    lo, hi = np.log(scale_range[0]), np.log(scale_range[1])
    s = np.exp(rng.uniform(lo, hi, size=(n, 1, 1)))
    u = rng.standard_normal((n, 1, d))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    rho = rng.uniform(0.0, 1.0, size=(n, 1, 1))
    z = rng.standard_normal((n, m, d)) / np.sqrt(d)
    return s * (rho * u + np.sqrt(1.0 - rho**2) * z)


def make_problem(
    seed: int,
    d: int = 10,
    num_classes: int = 20,
    tokens_per_sentence: int = 10,
    pool_size: int = 1000,
    test_size: int = 500,
    theta_scale: float = 1.0,
    scale_range: tuple[float, float] = (0.1, 2.0),
) -> Problem:
    """Draw Θ with i.i.d. N(0, theta_scale²) entries, a labelled pool, and a test set (in sentences)."""
    rng = np.random.default_rng(seed)
    theta = theta_scale * rng.standard_normal((d, num_classes))
    pool = make_sentences(rng, pool_size, tokens_per_sentence, d, scale_range)
    test = make_sentences(rng, test_size, tokens_per_sentence, d, scale_range)
    values = pool.reshape(-1, d)
    offsets = np.arange(pool_size + 1, dtype=np.int64) * tokens_per_sentence
    features = TokenFeatures(values, offsets, [f"s{i}" for i in range(pool_size)])
    labels = sample_labels(rng, theta, values)
    return Problem(theta, features, labels, test.reshape(-1, d))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sample_labels(rng: np.random.Generator, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y_t ~ Categorical(softmax(Θᵀx_t)), by inverse-CDF on one uniform per token."""
    cdf = np.cumsum(softmax(x @ theta), axis=1)
    u = rng.uniform(size=(len(x), 1))
    return np.minimum((u > cdf).sum(axis=1), theta.shape[1] - 1).astype(np.int64)


# -- the estimator ---------------------------------------------------------------------------------
def _objective(theta: np.ndarray, x: np.ndarray, onehot: np.ndarray, ridge: float) -> float:
    logits = x @ theta
    mx = logits.max(axis=1, keepdims=True)
    logz = (mx + np.log(np.exp(logits - mx).sum(axis=1, keepdims=True)))[:, 0]
    return float((logz - (logits * onehot).sum(axis=1)).sum() + 0.5 * ridge * (theta**2).sum())


def _hessian(x: np.ndarray, p: np.ndarray, ridge: float) -> np.ndarray:
    """∇²ℓ = Σ_t (diag(p_t) − p_t p_tᵀ) ⊗ x_t x_tᵀ + ridge·I, indexed (i,k),(j,l) like Θ[i,k]."""
    d, num_classes = x.shape[1], p.shape[1]
    z = (x[:, :, None] * p[:, None, :]).reshape(len(x), -1)  # z_t = x_t ⊗ p_t, index (i,k)
    diag = (z.T @ x).reshape(d, num_classes, d)  # Σ_t p_tk x_ti x_tj: the k = l blocks
    h = np.einsum("ikj,kl->ikjl", diag, np.eye(num_classes)).reshape(d * num_classes, -1)
    h -= z.T @ z
    h[np.diag_indices_from(h)] += ridge
    return h


def fit_mle(
    x: np.ndarray, y: np.ndarray, num_classes: int, ridge: float = 1.0, tol: float = 1e-8, max_iter: int = 100
) -> np.ndarray:
    """argmin_Θ −Σ_t log softmax(Θᵀx_t)[y_t] + ridge/2 ||Θ||²_F by damped Newton (exact Hessian).

    The objective is strictly convex (ridge > 0), so Newton with Armijo backtracking converges
    to the unique minimiser; d·L = 200 parameters keep the dL×dL solve trivial. No class is
    pinned to zero: the ridge alone picks the centred representative (Σ_k θ̂_k = 0).
    """
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0 (the unregularised MLE may not exist), got {ridge}")
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[1]
    onehot = np.eye(num_classes)[y]
    theta = np.zeros((d, num_classes))
    f = _objective(theta, x, onehot, ridge)
    for _ in range(max_iter):
        p = softmax(x @ theta)
        grad = x.T @ (p - onehot) + ridge * theta
        if np.abs(grad).max() < tol * max(1.0, len(x)):
            break
        step = np.linalg.solve(_hessian(x, p, ridge), grad.ravel()).reshape(d, num_classes)
        decrement = float((grad * step).sum())  # Newton decrement², > 0
        t = 1.0
        while True:
            new = theta - t * step
            f_new = _objective(new, x, onehot, ridge)
            if f_new <= f - 0.25 * t * decrement or t < 1e-10:
                break
            t *= 0.5
        theta, f = new, f_new
        if decrement < 1e-12:
            break
    return theta


# -- the metric ------------------------------------------------------------------------------------
def prediction_error(theta_hat: np.ndarray, theta: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(mean, max) over test tokens x of the L1 distance ||p_Θ̂(x) − p_Θ(x)||₁ (∈ [0, 2]).

    L1 between class distributions is twice the total-variation distance: "how much probability
    mass the fitted model puts in the wrong classes", invariant to Θ's softmax shift. The mean is
    the headline (average-case over the data distribution); the max over test tokens is closer to
    the worst-case prediction error FisherSFT's O(1/√n) bound is about.
    """
    err = np.abs(softmax(x @ theta_hat) - softmax(x @ theta)).sum(axis=1)
    return float(err.mean()), float(err.max())


# -- the experiment --------------------------------------------------------------------------------
def run_experiment(
    selectors: dict[str, dict],
    budgets: list[int],
    seeds: list[int],
    ridge: float = 1.0,
    **problem_kw,
) -> pd.DataFrame:
    """Tidy table, one row per (seed, selector, n): error, max_error, tokens, select_s, fit_s.

    ``selectors`` maps a registry name to its construction params (``get_selector(name, **p)``).
    Each seed draws a new world (Θ, pool, labels, test set); every selector sees the same world,
    and selection seed = world seed (only `random`-like selectors use it).
    """
    from infosift.select import get_selector  # registry import fills it; keep the module light

    rows = []
    for seed in seeds:
        prob = make_problem(seed, **problem_kw)
        offsets, num_classes = prob.pool.offsets, prob.theta.shape[1]
        for name, params in selectors.items():
            sel = get_selector(name, **params)
            for n in budgets:
                t0 = time.perf_counter()
                idx = np.asarray(sel.select(prob.pool, budget=n, seed=seed).indices, dtype=np.int64)
                t1 = time.perf_counter()
                tok = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
                theta_hat = fit_mle(prob.pool.values[tok], prob.labels[tok], num_classes, ridge)
                mean_err, max_err = prediction_error(theta_hat, prob.theta, prob.test_x)
                rows.append(
                    dict(seed=seed, selector=name, n=n, tokens=len(tok), error=mean_err, max_error=max_err,
                         select_s=t1 - t0, fit_s=time.perf_counter() - t1)
                )  # fmt: skip
    return pd.DataFrame(rows)


def _se(v: pd.Series) -> float:
    """Standard error of the mean over seeds (NaN with one seed)."""
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def summarize(table: pd.DataFrame, reference: str = "random") -> pd.DataFrame:
    """Mean and standard error (std/√seeds) per (selector, n), plus the paired ratio to ``reference``.

    ``ratio`` is computed per seed (selector error / reference error in the same world) and then
    averaged, so that the between-world variance does not drown the paired comparison; ``wins`` is
    the fraction of seeds where the selector's error is below the reference's.
    """
    t = table.copy()
    ref = t[t.selector == reference].set_index(["seed", "n"])["error"]
    if len(ref):
        ref_err = ref.loc[list(zip(t.seed, t.n, strict=True))].to_numpy()
        t["ratio"], t["wins"] = t["error"].to_numpy() / ref_err, t["error"].to_numpy() < ref_err
    extra = {"ratio": ("ratio", "mean"), "ratio_se": ("ratio", _se), "wins": ("wins", "mean")} if len(ref) else {}
    out = t.groupby(["selector", "n"], sort=False).agg(
        seeds=("error", "size"),
        error=("error", "mean"),
        error_se=("error", _se),
        max_error=("max_error", "mean"),
        **extra,
    )
    return out.reset_index()


def report(table: pd.DataFrame, focus: str = "fishersft") -> tuple[str, dict]:
    """(markdown table, metrics dict): mean ± s.e. per selector and n, and ``focus``'s paired ratio
    to every other selector (< 1 means ``focus`` predicts better), with the fraction of seeds it wins.
    """
    summ = summarize(table)
    names = list(dict.fromkeys(table.selector))
    others = [o for o in names if o != focus] if focus in names else []
    head = ["n", *names, *(f"{focus} / {o}" for o in others)]
    # not "error": DVC reads any key named error in a metrics file as a failed revision
    metrics: dict = {"seeds": int(table.seed.nunique()), "prediction_error": {}, "prediction_error_se": {}}
    for name in names:
        part = summ[summ.selector == name].set_index("n")
        metrics["prediction_error"][name] = {str(n): round(float(v), 5) for n, v in part.error.items()}
        metrics["prediction_error_se"][name] = {str(n): round(float(v), 5) for n, v in part.error_se.items()}
    for o in others:
        paired = summarize(table, reference=o)
        part = paired[paired.selector == focus].set_index("n")
        metrics[f"{focus}_over_{o}"] = {str(n): round(float(v), 4) for n, v in part.ratio.items()}
        metrics[f"{focus}_wins_vs_{o}"] = {str(n): round(float(v), 3) for n, v in part.wins.items()}
    best = summ.loc[summ.groupby("n").error.idxmin()].set_index("n").selector
    metrics["best_selector"] = {str(n): s for n, s in best.items()}
    if others:
        metrics[f"{focus}_best_at_every_n"] = bool((best == focus).all())
    rows = []
    for n in sorted(table.n.unique()):
        row = [str(n)]
        for name in names:
            r = summ[(summ.selector == name) & (summ.n == n)].iloc[0]
            row.append(f"{r.error:.4f} ± {r.error_se:.4f}")
        for o in others:
            k = str(n)
            ratio, wins = metrics[f"{focus}_over_{o}"][k], metrics[f"{focus}_wins_vs_{o}"][k]
            row.append(f"{ratio:.3f} (wins {wins:.0%})")
        rows.append(row)
    return to_markdown(pd.DataFrame(rows, columns=head)), metrics
