"""Token budgets and information weights: invariants for every selector, CELF, and brute-force greedies."""

from __future__ import annotations

import numpy as np
import pytest

import infosift.select.fishersft as fishersft
from infosift.features import TokenFeatures
from infosift.select import SelectionError, available, get_selector
from infosift.select.celf import best_of_two
from infosift.select.fishersft import lazy_greedy
from infosift.select.gip import greedy_projection, score_queries, sentence_embeddings, trace_objective
from tests.test_gip import brute_objective

# -- pools -----------------------------------------------------------------------------------------


def token_stats(rng: np.random.Generator, rows: int, vocab: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(p_next, p_sqnorm) of random softmax distributions over a small vocab at random next tokens."""
    logits = 2.0 * rng.standard_normal((rows, vocab))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, vocab, rows)
    return p[np.arange(rows), y].astype(np.float32), (p * p).sum(1).astype(np.float32)


def pool(n: int, d: int, seed: int, dtype=np.float64, stats: bool = True) -> TokenFeatures:
    """n sentences of 1..12 tokens in R^d, fine-tune costs 5..60 (unrelated to length), token stats."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 13, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    scale = (1.0 + np.arange(d)) ** -0.5
    values = (rng.standard_normal((int(offsets[-1]), d)) * scale).astype(dtype)
    costs = rng.integers(5, 61, n)
    p_next, p_sqnorm = token_stats(rng, len(values)) if stats else (None, None)
    return TokenFeatures(values, offsets, [f"x{i}" for i in range(n)], costs=costs, p_next=p_next, p_sqnorm=p_sqnorm)


def query_inputs(name: str, features: TokenFeatures, seed: int) -> dict:
    """The query signal a selector needs: scores for gip and dsir (dsir: log weights), nothing for the rest."""
    if name in ("gip", "dsir"):
        return {"scores": np.random.default_rng(1000 + seed).standard_normal(len(features))}
    return {}


EXTRA = [
    ("density", {"mode": "lowest"}),
    ("dsir", {"mode": "sample"}),
    ("fishersft", {"weighting": "uncertainty"}),
    ("fishersft", {"weighting": "error"}),
    ("fishersft", {"weighting": "length"}),
    ("fishersft", {"ridge": 0.1, "batch": 2, "refactor_every": 3}),
    ("gip", {"normalize": True}),
    ("length_matched", {"of": {"selector": "fishersft", "weighting": "length"}, "bins": 3}),
    ("typicality", {"k_nn": 3, "n_init": 1}),
]
VARIANTS = [(name, {}) for name in available()] + [(n, p) for n, p in EXTRA if n in available()]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in params.items()) for name, params in VARIANTS]


def assert_filled(indices: np.ndarray, costs: np.ndarray, budget: int) -> None:
    """In range, no duplicates, within budget, and no unchosen example would still fit."""
    idx = np.asarray(indices).tolist()
    assert all(0 <= i < len(costs) for i in idx), idx
    assert len(set(idx)) == len(idx), f"duplicates in {idx}"
    used = int(costs[idx].sum()) if idx else 0
    assert used <= budget, f"over budget: {used} > {budget}"
    unchosen = np.setdiff1d(np.arange(len(costs)), idx)
    if len(unchosen):
        cheapest = int(costs[unchosen].min())
        assert cheapest > budget - used, f"not filled: {budget - used} left, an unchosen example costs {cheapest}"


# -- 1. invariants for every selector --------------------------------------------------------------


def test_every_registered_selector_is_covered():
    names = {name for name, _ in VARIANTS}
    assert names == set(available())
    assert {"fishersft", "sentence_od", "gip", "random", "density", "typicality", "length", "length_matched"} <= names


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("seed,n,d", [(0, 30, 4), (1, 45, 6), (2, 60, 8)])
def test_token_budget_is_never_exceeded_and_always_filled(name, params, seed, n, d):
    f = pool(n, d, seed)
    costs, total = f.token_costs, int(f.token_costs.sum())
    sel = get_selector(name, **params)
    budgets = [int(costs.min()), int(costs.min()) + 7, total // 10, total // 3, (4 * total) // 5, total - 1, total]
    for budget in budgets:
        res = sel.select(f, budget, seed=seed, unit="tokens", **query_inputs(name, f, seed))
        assert_filled(res.indices, costs, budget)
        assert res.indices.dtype.kind == "i"
        used = int(costs[res.indices].sum())
        assert res.info["unit"] == "tokens" and res.info["budget"] == budget
        assert (res.info["used"], res.info["n_chosen"]) == (used, len(res.indices))
        if res.gains is not None:
            assert len(res.gains) == len(res.indices)
    full = sel.select(f, total, seed=seed, unit="tokens", **query_inputs(name, f, seed))
    assert sorted(full.indices.tolist()) == list(range(n))  # the whole pool's tokens buy the whole pool


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_example_budget_picks_exactly_budget(name, params):
    f = pool(40, 5, seed=3)
    sel = get_selector(name, **params)
    for budget in (1, 2, 13, 39, 40, np.int64(17)):
        res = sel.select(f, budget, seed=1, unit="examples", **query_inputs(name, f, 3))
        idx = res.indices.tolist()
        assert len(idx) == budget and len(set(idx)) == budget
        assert all(0 <= i < 40 for i in idx)
        assert (res.info["unit"], res.info["used"]) == ("examples", budget)


# -- 2. bad budgets ---------------------------------------------------------------------------------


def bad_budgets(f: TokenFeatures) -> list[tuple[object, str, str]]:
    cheapest, total = int(f.token_costs.min()), int(f.token_costs.sum())
    return [
        (cheapest - 1, "tokens", rf"token budget {cheapest - 1} fits no example .*shortest costs {cheapest}"),
        (0, "tokens", "fits no example"),
        (-5, "tokens", "fits no example"),
        (total + 1, "tokens", rf"token budget {total + 1} exceeds the whole pool \({total} tokens\)"),
        (2.5, "tokens", r"budget must be a whole number of tokens, got 2\.5"),
        ("10", "tokens", "whole number of tokens, got '10'"),
        (True, "tokens", "whole number of tokens, got True"),
        (np.float64(30.0), "tokens", "whole number"),
        (None, "tokens", "whole number"),
        (2.5, "examples", "whole number of examples"),
        (True, "examples", "whole number of examples, got True"),
        (0, "examples", "budget must be >= 1, got 0"),
        (len(f) + 1, "examples", rf"budget {len(f) + 1} is larger than the pool \({len(f)} examples\)"),
        (10, "bytes", "budget unit must be one of examples, tokens, got 'bytes'"),
        (10, "Tokens", "unit must be one of"),
    ]


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_bad_budgets_are_selection_errors_that_say_why(name, params):
    f = pool(20, 4, seed=4)
    sel = get_selector(name, **params)
    for budget, unit, message in bad_budgets(f):
        with pytest.raises(SelectionError, match=message):
            sel.select(f, budget, seed=0, unit=unit, **query_inputs(name, f, 4))


# -- 3. CELF ------------------------------------------------------------------------------------------


def counting(greedy):
    calls: list[bool] = []

    def run(ratio: bool):
        calls.append(ratio)
        return greedy(ratio)

    return run, calls


def fake_runs(f_plain: float, f_ratio: float):
    runs = {
        False: (np.array([3]), np.array([f_plain]), {"who": "plain"}),
        True: (np.array([0, 1, 2]), np.array([f_ratio / 2, f_ratio / 2]), {"who": "ratio"}),
    }
    return lambda ratio: runs[ratio]


def test_best_of_two_keeps_the_higher_objective():
    costs = np.array([5, 6, 7, 40])
    idx, gains, info = best_of_two(fake_runs(3.0, 2.0), costs)
    assert idx.tolist() == [3] and info["who"] == "plain" and info["celf"] == "plain-gain"
    assert (info["objective_plain_gain"], info["objective_cost_benefit"]) == (3.0, 2.0)
    idx, gains, info = best_of_two(fake_runs(1.0, 2.5), costs)
    assert idx.tolist() == [0, 1, 2] and info["who"] == "ratio" and info["celf"] == "cost-benefit"
    assert gains.sum() == pytest.approx(2.5)


@pytest.mark.parametrize("costs,n_calls", [(np.full(6, 7), 1), (np.ones(3, dtype=np.int64), 1), (np.array([7, 8]), 2)])
def test_best_of_two_runs_once_when_costs_are_equal(costs, n_calls):
    greedy, calls = counting(fake_runs(1.0, 5.0))
    idx, _, info = best_of_two(greedy, costs)
    assert len(calls) == n_calls and calls[0] is False
    assert idx.tolist() == ([3] if n_calls == 1 else [0, 1, 2])  # equal costs: the plain run, never compared


def from_sentences(sents: list[np.ndarray], costs: list[int]) -> TokenFeatures:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sents])])
    return TokenFeatures(np.concatenate(sents), offsets, [str(i) for i in range(len(sents))], costs=costs)


def test_celf_plain_gain_wins_with_one_long_informative_example():
    """Ten redundant cheap sentences (1 token along e_0, scale 3) vs one long sentence spanning R^4.

    By gain/cost a cheap one goes first (log 10 / 5 = 0.46 > 4 log 101 / 50 = 0.37), after which the long
    one no longer fits and the rest are redundant (total log 91 = 4.5); plain gain takes the long one (18.5).
    """
    f = from_sentences([3.0 * np.eye(4)[:1] for _ in range(10)] + [10.0 * np.eye(4)], [5] * 10 + [50])
    res = get_selector("fishersft").select(f, 50, unit="tokens")
    assert res.indices.tolist() == [10]
    assert res.info["celf"] == "plain-gain"
    assert res.gains.sum() == pytest.approx(4 * np.log(101.0), rel=1e-12)
    assert res.info["objective_cost_benefit"] == pytest.approx(np.log(91.0), rel=1e-12)


def test_celf_cost_benefit_wins_with_many_short_examples():
    """Eight cheap orthogonal sentences (gain log 10 each, cost 5) vs one that costs the whole budget (log 17)."""
    sents = [3.0 * np.eye(8)[k : k + 1] for k in range(8)] + [4.0 * np.eye(8)[:1]]
    f = from_sentences(sents, [5] * 8 + [40])
    res = get_selector("fishersft").select(f, 40, unit="tokens")
    assert sorted(res.indices.tolist()) == list(range(8))
    assert res.info["celf"] == "cost-benefit"
    assert res.gains.sum() == pytest.approx(8 * np.log(10.0), rel=1e-12)
    assert res.info["objective_plain_gain"] == pytest.approx(np.log(17.0), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_fishersft_objective_is_the_better_of_the_two_lazy_greedies(seed):
    f = pool(40, 6, seed)
    costs = f.token_costs
    budget = int(costs.sum()) // (3 + seed)
    runs = {r: lazy_greedy(f, costs, budget, ratio=r, ridge=0.5) for r in (False, True)}
    objectives = {r: float(runs[r][1].sum()) for r in runs}
    res = get_selector("fishersft", ridge=0.5).select(f, budget, unit="tokens")
    best = max(objectives, key=lambda r: (objectives[r], not r))  # ties: the plain run
    assert res.gains.sum() == pytest.approx(max(objectives.values()), rel=1e-12)
    assert res.indices.tolist() == runs[best][0].tolist()
    assert res.info["celf"] == ("cost-benefit" if best else "plain-gain")
    v = 0.5 * np.eye(f.dim) + f.subset(res.indices).values.T @ f.subset(res.indices).values
    assert res.gains.sum() == pytest.approx(np.linalg.slogdet(v)[1] - f.dim * np.log(0.5), rel=1e-10)


def test_fishersft_runs_one_greedy_for_equal_costs(monkeypatch):
    real = fishersft.lazy_greedy
    calls: list[bool] = []

    def spy(features, costs, budget, ratio=False, **kw):
        calls.append(ratio)
        return real(features, costs, budget, ratio, **kw)

    monkeypatch.setattr(fishersft, "lazy_greedy", spy)
    f = pool(25, 4, seed=5)
    get_selector("fishersft").select(f, 10, unit="examples")
    assert calls == [False]
    calls.clear()
    get_selector("fishersft").select(f, int(f.token_costs.sum()) // 4, unit="tokens")
    assert sorted(calls) == [False, True]
    calls.clear()
    f.costs = np.full(len(f), 9, dtype=np.int64)
    res = get_selector("fishersft").select(f, 9 * 7 + 4, unit="tokens")
    assert calls == [False] and len(res.indices) == 7


@pytest.mark.parametrize("seed", range(4))
def test_gip_objective_is_the_better_of_the_two_projections(seed):
    f = pool(45, 6, seed)
    scores = np.random.default_rng(seed).standard_normal(len(f))
    costs = f.token_costs
    budget = int(costs.sum()) // 4
    emb = sentence_embeddings(f)
    q = score_queries(emb, scores)
    runs = {r: greedy_projection(emb, q, budget, 1.0, costs=costs, ratio=r) for r in (False, True)}
    objectives = {r: float(runs[r][1].sum()) for r in runs}
    res = get_selector("gip").select(f, budget, scores=scores, unit="tokens")
    best = max(objectives, key=lambda r: (objectives[r], not r))
    assert res.indices.tolist() == runs[best][0].tolist()
    assert res.info["objective"] == pytest.approx(max(objectives.values()), rel=1e-12)
    assert res.info["objective"] == pytest.approx(trace_objective(emb, q, res.indices, 1.0), rel=1e-8)


# -- 4. lazy greedy and GIP under a knapsack == brute force ---------------------------------------


def logdet_gain(x: np.ndarray, v: np.ndarray) -> float:
    """log det(I + X V^-1 X^T), from scratch."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.linalg.slogdet(np.eye(len(x)) + x @ np.linalg.solve(v, x.T))[1])


def brute_knapsack_greedy(f: TokenFeatures, costs: np.ndarray, budget: int, ratio: bool, ridge: float):
    """Every step: all gains from scratch among unchosen examples that fit; best gain (or gain/cost) wins."""
    v, chosen, gains, left = ridge * np.eye(f.dim), [], [], budget
    while True:
        fits = [i for i in range(len(f)) if i not in chosen and costs[i] <= left]
        if not fits:
            return chosen, gains
        g = {i: logdet_gain(f.sentence(i), v) for i in fits}
        best = max(fits, key=lambda i: (g[i] / costs[i] if ratio else g[i], -i))  # ties: lowest index
        chosen.append(best)
        gains.append(g[best])
        x = np.asarray(f.sentence(best), dtype=np.float64)
        v += x.T @ x
        left -= int(costs[best])


@pytest.mark.parametrize("ratio", [False, True])
@pytest.mark.parametrize("seed,n,d,ridge,frac", [(0, 30, 4, 1.0, 0.3), (1, 50, 8, 0.1, 0.5), (2, 60, 6, 2.0, 0.15)])
def test_lazy_greedy_under_a_knapsack_equals_brute_force(seed, n, d, ridge, frac, ratio):
    f = pool(n, d, seed)
    costs = f.token_costs
    budget = int(costs.sum() * frac)
    idx, gains, _ = lazy_greedy(f, costs, budget, ratio=ratio, ridge=ridge, batch=3, refactor_every=4, device="cpu")
    ref_idx, ref_gains = brute_knapsack_greedy(f, costs, budget, ratio, ridge)
    assert idx.tolist() == ref_idx
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-9, atol=1e-12)
    assert_filled(idx, costs, budget)


def brute_gip(emb, q, costs, budget, ridge, ratio):
    chosen, gains, left = [], [], budget
    while True:
        fits = [i for i in range(len(emb)) if i not in chosen and costs[i] <= left]
        if not fits:
            return chosen, gains
        base = brute_objective(emb, q, chosen, ridge)
        g = {i: brute_objective(emb, q, chosen + [i], ridge) - base for i in fits}
        best = max(fits, key=lambda i: (g[i] / costs[i] if ratio else g[i], -i))
        chosen.append(best)
        gains.append(g[best])
        left -= int(costs[best])


@pytest.mark.parametrize("ratio", [False, True])
@pytest.mark.parametrize("seed,n,d,ridge,frac", [(0, 30, 4, 1.0, 0.3), (1, 50, 8, 0.1, 0.4), (2, 40, 6, 3.0, 0.2)])
def test_gip_greedy_projection_under_a_knapsack_equals_brute_force(seed, n, d, ridge, frac, ratio):
    f = pool(n, d, seed)
    rng = np.random.default_rng(seed)
    emb, q = sentence_embeddings(f), rng.standard_normal((3, d))
    costs = f.token_costs
    budget = int(costs.sum() * frac)
    for gram in (2**31, 0):  # precomputed Gram and column-at-a-time
        idx, gains, _ = greedy_projection(emb, q, budget, ridge, max_gram_bytes=gram, costs=costs, ratio=ratio)
        ref_idx, ref_gains = brute_gip(emb, q, costs, budget, ridge, ratio)
        assert idx.tolist() == ref_idx
        np.testing.assert_allclose(gains, ref_gains, rtol=1e-7, atol=1e-9)
        assert gains.sum() == pytest.approx(trace_objective(emb, q, idx, ridge), rel=1e-9)
        assert_filled(idx, costs, budget)


# -- 5. information weights -----------------------------------------------------------------------


def brute_weights(f: TokenFeatures, weighting: str) -> np.ndarray:
    if weighting == "length":  # every token of sentence i scaled by 1 / sqrt(its token count)
        return np.concatenate([np.full(len(f.sentence(i)), len(f.sentence(i)) ** -0.5) for i in range(len(f))])
    sq, pn = np.asarray(f.p_sqnorm, dtype=np.float64), np.asarray(f.p_next, dtype=np.float64)
    return np.sqrt(1.0 - sq) if weighting == "uncertainty" else np.sqrt(1.0 - 2.0 * pn + sq)


@pytest.mark.parametrize("weighting", ["uncertainty", "error", "length"])
@pytest.mark.parametrize("unit,seed", [("examples", 0), ("examples", 1), ("tokens", 2), ("tokens", 3)])
def test_weighting_selects_what_brute_force_selects_on_scaled_rows(weighting, unit, seed):
    f = pool(35, 5, seed, dtype=np.float32)  # embed writes float16/float32 values
    w = brute_weights(f, weighting)
    assert np.all(w > 0) and np.all(w < {"uncertainty": 1.0, "error": np.sqrt(2.0), "length": 1.0 + 1e-12}[weighting])
    scaled = f.with_values(np.asarray(f.values, dtype=np.float64) * w[:, None])
    costs = f.token_costs if unit == "tokens" else np.ones(len(f), dtype=np.int64)
    budget = int(costs.sum()) // 3 if unit == "tokens" else 12
    runs = [
        brute_knapsack_greedy(scaled, costs, budget, r, 1.0) for r in ((False, True) if unit == "tokens" else (False,))
    ]
    ref_idx, ref_gains = max(runs, key=lambda run: sum(run[1]))
    res = get_selector("fishersft", weighting=weighting).select(f, budget, unit=unit)
    assert res.indices.tolist() == ref_idx
    np.testing.assert_allclose(res.gains, ref_gains, rtol=1e-5)
    assert res.info["weighting"] == weighting


@pytest.mark.parametrize("weighting", ["uncertainty", "error", "length"])
def test_weighting_changes_the_selection(weighting):
    differs = []
    for seed in range(4):
        f = pool(35, 5, seed, dtype=np.float32)
        plain = get_selector("fishersft").select(f, 10).indices.tolist()
        weighted = get_selector("fishersft", weighting=weighting).select(f, 10).indices.tolist()
        differs.append(plain != weighted)
    assert any(differs)


def test_length_weight_values_content_not_token_count():
    """Under ``length`` a sentence whose tokens are another's repeated 3 times has the same mean outer product,
    so the same gain; unweighted, the repetition alone makes it worth more."""
    rows = pool(1, 4, seed=11, stats=False).values
    rows = np.asarray(rows, dtype=np.float64)
    once, thrice = TokenFeatures.from_list([rows]), TokenFeatures.from_list([np.tile(rows, (3, 1))])

    def gain(features: TokenFeatures, weighting: str) -> float:
        return float(get_selector("fishersft", weighting=weighting).select(features, 1).gains[0])

    assert gain(thrice, "none") > gain(once, "none") + 1e-3
    assert gain(thrice, "length") == pytest.approx(gain(once, "length"), rel=1e-6)  # float32 weights
    assert gain(once, "length") < gain(once, "none") or len(rows) == 1


def test_error_weight_zeroes_a_perfectly_predicted_sentence():
    """p_next = 1 (so p_sqnorm = 1): w = 0 under both weightings, whatever the embeddings say."""
    f = pool(6, 4, seed=7, dtype=np.float32)
    big = f.offsets[2], f.offsets[3]
    f.values[big[0] : big[1]] *= 100.0  # sentence 2 dominates the unweighted design
    assert get_selector("fishersft").select(f, 1).indices.tolist() == [2]
    f.p_next[big[0] : big[1]] = 1.0
    f.p_sqnorm[big[0] : big[1]] = 1.0
    for weighting in ("uncertainty", "error"):
        res = get_selector("fishersft", weighting=weighting).select(f, 6)
        assert res.indices.tolist()[-1] == 2
        assert res.gains[-1] == pytest.approx(0.0, abs=1e-9)


def test_weighting_needs_token_stats_and_a_known_name():
    f = pool(10, 4, seed=8, stats=False)
    for weighting in ("uncertainty", "error"):
        with pytest.raises(SelectionError, match="needs p_next and p_sqnorm"):
            get_selector("fishersft", weighting=weighting).select(f, 3)
    with_next = pool(10, 4, seed=8)
    with_next.p_sqnorm = None
    with pytest.raises(SelectionError, match="p_sqnorm"):
        get_selector("fishersft", weighting="error").select(with_next, 3)
    assert len(get_selector("fishersft", weighting="none").select(f, 3).indices) == 3
    for bad in ("fisher", "None", "", None):
        with pytest.raises(SelectionError, match="weighting must be one of none, uncertainty, error, length"):
            get_selector("fishersft", weighting=bad)
    nan = pool(10, 4, seed=9)
    nan.p_next[3] = np.nan
    with pytest.raises(SelectionError, match="NaN"):
        get_selector("fishersft", weighting="error").select(nan, 3)


# -- 6. seeded selectors ---------------------------------------------------------------------------

SEEDED = [(n, p) for n, p in [("random", {}), ("density", {}), ("dsir", {"mode": "sample"})] if n in available()]


@pytest.mark.parametrize("name,params", SEEDED, ids=[n for n, _ in SEEDED])
@pytest.mark.parametrize("unit,budget", [("examples", 12), ("tokens", 500)])
def test_seeded_selectors_repeat_with_a_seed_and_vary_across_seeds(name, params, unit, budget):
    f = pool(50, 5, seed=10)
    sel = get_selector(name, **params)
    inputs = query_inputs(name, f, 10)
    picks = {s: sel.select(f, budget, seed=s, unit=unit, **inputs).indices.tolist() for s in range(5)}
    for s in range(5):
        assert sel.select(f, budget, seed=s, unit=unit, **inputs).indices.tolist() == picks[s]
        assert get_selector(name, **params).select(f, budget, seed=s, unit=unit, **inputs).indices.tolist() == picks[s]
    assert len({tuple(p) for p in picks.values()}) == 5  # five seeds, five different selections
    assert len({tuple(sorted(p)) for p in picks.values()}) == 5  # different sets, not only orders
