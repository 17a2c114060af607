"""Evidence: ratio metric, paired bootstrap, random-equivalent tokens, verdicts, table and plot."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from infosift.evidence import (
    ModelResult,
    evidence_table,
    mean_se,
    metric,
    paired_bootstrap,
    random_equivalent,
    seeds_won,
    tokens_curve,
    verdict,
    verdict_lines,
)


def test_metric_is_pooled_ratio_not_mean_of_ratios():
    num, den = np.array([2.0, 9.0]), np.array([1.0, 3.0])
    assert metric(num, den) == pytest.approx(11.0 / 4.0)  # the mean of per-example ratios would be 2.5
    assert metric(np.array([1.0, 0.0, 1.0, 1.0]), np.ones(4)) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        metric(np.array([1.0]), np.array([0.0]))


def test_mean_se_matches_hand_and_scipy():
    v = np.array([1.0, 2.0, 4.0])
    mean, se = mean_se(v)
    assert mean == pytest.approx(7.0 / 3.0)
    assert se == pytest.approx(np.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2 / 3))
    assert se == pytest.approx(stats.sem(v))
    m1, se1 = mean_se(np.array([5.0]))
    assert m1 == 5.0 and np.isnan(se1)


def test_bootstrap_constant_improvement_is_exact_and_degenerate():
    rng = np.random.default_rng(1)
    s, e, c = 4, 60, 0.125
    den = rng.integers(3, 40, size=(s, e)).astype(float)
    ref_num = den * rng.uniform(0.8, 2.0, size=(s, e))
    sel_num = ref_num - c * den  # better by c per token on every example and seed: m(sel) = m(ref) - c always
    out = paired_bootstrap(sel_num, den, ref_num, den, n_boot=500, seed=3)
    assert out["diff"] == pytest.approx(-c, abs=1e-12)
    assert out["lo"] == pytest.approx(-c, abs=1e-10) and out["hi"] == pytest.approx(-c, abs=1e-10)
    ref_mean = np.mean(ref_num.sum(1) / den.sum(1))
    assert out["rel"] == pytest.approx(-c / ref_mean)
    assert out["rel_lo"] <= out["rel"] <= out["rel_hi"]
    assert out["n_boot"] == 500 and out["level"] == 0.95


def test_bootstrap_width_matches_normal_theory_for_one_seed():
    rng = np.random.default_rng(7)
    e = 3000
    ref = rng.normal(1.0, 0.5, size=e)
    sel = ref + rng.normal(-0.03, 0.4, size=e)
    ones = np.ones((1, e))
    out = paired_bootstrap(sel[None], ones, ref[None], ones, n_boot=4000, seed=0)
    d = sel - ref
    se = stats.sem(d)
    assert out["diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert (out["hi"] - out["lo"]) == pytest.approx(2 * stats.norm.ppf(0.975) * se, rel=0.08)
    assert (out["hi"] + out["lo"]) / 2 == pytest.approx(d.mean(), abs=0.15 * se)
    # unpaired resampling would give a much wider interval: the pairing is what the test holds
    assert out["hi"] - out["lo"] < 0.6 * 2 * 1.96 * np.sqrt(ref.var() / e + sel.var() / e)


def test_bootstrap_is_seeded_and_resamples_seeds():
    rng = np.random.default_rng(2)
    s, e = 5, 500
    den = rng.integers(1, 30, size=(s, e)).astype(float)
    ref = den * rng.uniform(0.5, 1.5, size=(s, e))
    # each seed has its own offset: seed noise must widen the interval beyond example noise alone
    sel = ref + den * (rng.normal(0, 0.01, size=(s, e)) + np.array([-0.2, 0.1, -0.1, 0.05, -0.15])[:, None])
    a = paired_bootstrap(sel, den, ref, den, seed=11)
    b = paired_bootstrap(sel, den, ref, den, seed=11)
    c = paired_bootstrap(sel, den, ref, den, seed=12)
    assert a == b
    assert a["lo"] != c["lo"]
    offsets = np.array([-0.2, 0.1, -0.1, 0.05, -0.15])
    assert a["hi"] - a["lo"] > 2 * stats.sem(offsets)  # t-free lower bound on a seed-driven spread


def test_bootstrap_zero_difference_covers_zero():
    rng = np.random.default_rng(5)
    s, e = 3, 400
    ref = rng.normal(1.0, 0.3, size=(s, e))
    eps = rng.normal(0.0, 0.2, size=(s, e))
    sel = ref + (eps - eps.mean(1, keepdims=True))  # per-seed mean difference exactly zero
    ones = np.ones((s, e))
    out = paired_bootstrap(sel, ones, ref, ones, seed=0)
    assert out["diff"] == pytest.approx(0.0, abs=1e-12)
    assert out["lo"] < 0 < out["hi"]


def test_seeds_won():
    assert seeds_won([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0]) == pytest.approx(0.5)  # tie is not a win
    assert seeds_won([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0], lower_is_better=False) == pytest.approx(0.25)
    assert seeds_won([0.3], [0.1 + 0.2]) == 0.0  # 0.3 vs 0.30000000000000004: rounding, not a win


def test_random_equivalent_interpolates_in_log_tokens():
    t, y = np.array([4000.0, 1000.0, 2000.0]), np.array([1.1, 1.3, 1.2])  # unsorted on purpose
    mid = random_equivalent(t, y, 1.15)
    assert mid["tokens"] == pytest.approx(np.sqrt(2000 * 4000)) and mid["extrapolated"] is False
    assert random_equivalent(t, y, 1.2)["tokens"] == pytest.approx(2000.0)
    ext = random_equivalent(t, y, 1.0)
    assert ext["tokens"] == pytest.approx(8000.0) and ext["extrapolated"] is True
    low = random_equivalent(t, y, 1.4)  # worse than random's smallest budget: back along the first segment
    assert low["tokens"] == pytest.approx(500.0) and low["extrapolated"] is True
    acc = random_equivalent(t, 2.4 - y, 1.4, lower_is_better=False)  # accuracy-like, higher is better
    assert acc["tokens"] == pytest.approx(8000.0)


def test_random_equivalent_none_when_random_does_not_improve():
    assert random_equivalent([1000, 2000, 4000], [1.2, 1.2, 1.2], 1.0)["tokens"] is None
    assert random_equivalent([1000, 2000, 4000], [1.3, 1.1, 1.2], 1.0)["tokens"] is None  # last segment worsens
    assert random_equivalent([1000], [1.2], 1.1)["tokens"] is None


def test_verdict():
    assert verdict(-0.3, -0.1) == "beats random (95 %)"
    assert verdict(-0.3, 0.1) == "no difference detected"
    assert verdict(0.1, 0.3) == "worse than random (95 %)"
    assert verdict(0.1, 0.3, lower_is_better=False, level=0.9) == "beats random (90 %)"


def _synthetic_results(e: int = 300, seeds=(0, 1, 2)) -> list[ModelResult]:
    """Random at three budgets improving in log tokens; 'good', 'same', 'bad' at budget 2000."""
    rng = np.random.default_rng(0)
    den = rng.integers(5, 50, size=e).astype(float)
    difficulty = rng.normal(0.0, 0.3, size=e)  # shared by every model: the pairing cancels it
    out = []
    for budget in (1000, 2000, 4000):
        level = 1.5 - 0.1 * np.log2(budget / 1000)
        for s in seeds:
            per_tok = level + difficulty + rng.normal(0, 0.02, size=e)
            ref_num = den * per_tok
            out.append(ModelResult("random", budget, s, int(budget * (1 + 0.01 * s)), ref_num, den))
            if budget != 2000:
                continue
            noise = rng.normal(0, 0.02, size=e)
            out.append(ModelResult("good", budget, s, budget, ref_num + den * (-0.05 + noise), den))
            perm = rng.permutation(e)  # same (num, den) pairs in another order: the same metric per seed
            out.append(ModelResult("same", budget, s, budget, ref_num[perm], den[perm]))
            out.append(ModelResult("bad", budget, s, budget, ref_num + den * (0.05 + noise), den))
    return out


def test_evidence_table_end_to_end():
    df = evidence_table(_synthetic_results(), n_boot=500)
    assert list(df["budget"]) == [1000, 2000, 2000, 2000, 2000, 4000]
    rows = df.set_index(["selector", "budget"])
    assert rows.loc[("good", 2000), "verdict"] == "beats random (95 %)"
    assert rows.loc[("same", 2000), "verdict"] == "no difference detected"
    assert rows.loc[("bad", 2000), "verdict"] == "worse than random (95 %)"
    assert rows.loc[("random", 2000), "verdict"] == "reference" and np.isnan(rows.loc[("random", 2000), "diff"])
    good, bad = rows.loc[("good", 2000)], rows.loc[("bad", 2000)]
    assert good["seeds_won"] == 1.0 and bad["seeds_won"] == 0.0 and good["n_paired"] == 3
    assert rows.loc[("same", 2000), "seeds_won"] == 0.0  # equal up to summation order: a tie, not a win
    assert good["hi"] < 0 and good["rel_hi_pct"] < 0 and bad["lo"] > 0
    # random gains 0.1 per doubling, so 0.05 better is worth about sqrt(2) times the tokens
    assert good["random_equiv_x"] == pytest.approx(np.sqrt(2), rel=0.05) and good["extrapolated"] is False
    assert bad["random_equiv_x"] == pytest.approx(1 / np.sqrt(2), rel=0.05)
    assert rows.loc[("random", 2000), "tokens"] == pytest.approx(2000 * 1.01)

    lines = verdict_lines(df)
    assert len(lines) == 3
    line = next(x for x in lines if x.startswith("good"))
    assert line.startswith("good @ 2000 tokens: beats random (95 %): NLL -")
    assert "won 3/3 seeds" in line and "random needs 1.4x the tokens" in line


def test_evidence_table_pairs_by_seed_and_reports_errors():
    res = _synthetic_results()
    partial = [r for r in res if not (r.selector == "good" and r.seed == 2)]
    assert evidence_table(partial, n_boot=200).set_index(["selector", "budget"]).loc[("good", 2000), "n_paired"] == 2
    with pytest.raises(ValueError, match="budget 2000"):
        evidence_table([r for r in res if not (r.selector == "random" and r.budget == 2000)], n_boot=200)
    shifted = [r for r in res if r.selector == "random"] + [
        ModelResult("good", 2000, 9, 2000, r.num, r.den) for r in res if r.selector == "good" and r.seed == 0
    ]
    with pytest.raises(ValueError, match="share no seed"):
        evidence_table(shifted, n_boot=200)
    short = res + [ModelResult("odd", 2000, 0, 2000, np.ones(5), np.ones(5))]
    with pytest.raises(ValueError, match="numbers of test examples"):
        evidence_table(short, n_boot=200)


def test_tokens_curve_has_no_interval_for_a_single_seed_and_plots(tmp_path):
    from infosift.plots import plot_vs_tokens

    res = _synthetic_results(e=50)
    res.append(ModelResult("single", 1000, 0, 1000, res[0].num * 0.98, res[0].den))  # one seed: no error bar
    curve = tokens_curve(res)
    single = curve[curve["selector"] == "single"].iloc[0]
    assert np.isnan(single["half"]) and single["mean"] == pytest.approx(metric(res[0].num * 0.98, res[0].den))
    assert not curve[curve["selector"] != "single"]["half"].isna().any()
    assert list(curve["selector"]) == sorted(curve["selector"])  # one run of rows per selector, tokens ascending
    for _, g in curve.groupby("selector"):
        assert g["tokens"].is_monotonic_increasing
    out = tmp_path / "nll_vs_tokens.png"
    plot_vs_tokens(curve, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
