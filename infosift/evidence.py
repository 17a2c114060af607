"""Evidence that a selector beats random selection at equal cost, from per-test-example results.

Every fine-tuned model is scored on the same E test examples, each giving a numerator and a
denominator (NLL summed over the example's response tokens and their count; or 0/1 and 1 for
accuracy). A model's metric is the ratio estimator

    m = sum_e num_e / sum_e den_e          (token-pooled NLL per token; mean accuracy when den = 1)

A selector is compared with random at the same budget, seed against seed, example against example:

    diff = mean_s m(sel_s) - mean_s m(ref_s)

Two sources of noise matter: which seed (selection + fine-tune) we happened to run, and which test
examples we happened to draw. The paired bootstrap resamples both at once - the same seeds for
selector and reference, the same examples for every model - so that the interval counts both while
the pairing cancels what the models share (hard examples are hard for all of them).

The cost side: random's (tokens, metric) curve, interpolated linearly in log(tokens), says how many
tokens random would need to reach the selector's metric ("random needs 1.7x the tokens").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = [
    "selector",
    "budget",
    "n_seeds",
    "n_paired",
    "tokens",
    "steps",
    "learning_rate",
    "mean",
    "se",
    "diff",
    "lo",
    "hi",
    "rel_pct",
    "rel_lo_pct",
    "rel_hi_pct",
    "seeds_won",
    "random_equiv_cost",  # tokens or examples (the budget unit) random needs for the same metric
    "random_equiv_x",
    "extrapolated",
    "verdict",
]


@dataclass
class ModelResult:
    """Per-test-example results of one fine-tuned model; all models share the same E examples in order."""

    selector: str  # variant name, e.g. "random", "fishersft", "fishersft-unc"
    budget: int  # the nominal budget (tokens or examples) it was selected under
    seed: int  # selection/fine-tune seed
    tokens: int  # training tokens actually used by the selection
    num: np.ndarray  # (E,) per-test-example numerator, e.g. NLL sum over the example's response tokens
    den: np.ndarray  # (E,) per-test-example denominator, e.g. number of response tokens (1 for accuracy)
    steps: float = float("nan")  # optimizer steps of its fine-tune (the evidence protocol's floor is on these)
    learning_rate: float = float("nan")  # of its fine-tune (the sweep's choice, frozen for every selector)

    def __post_init__(self) -> None:
        self.num = np.asarray(self.num, dtype=np.float64)
        self.den = np.asarray(self.den, dtype=np.float64)
        if self.num.ndim != 1 or self.num.shape != self.den.shape:
            raise ValueError(
                f"{self.selector}@{self.budget} seed {self.seed}: num {self.num.shape} and den {self.den.shape} "
                "must be 1-D of the same length"
            )


def metric(num: np.ndarray, den: np.ndarray) -> float:
    """Ratio estimator sum(num) / sum(den): pooled over tokens, so long answers weigh by their length."""
    total = float(np.sum(den))
    if total <= 0:
        raise ValueError(f"metric: denominator sums to {total}, must be positive")
    return float(np.sum(num)) / total


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean over seeds and its standard error std(ddof=1)/sqrt(n); se is nan for one seed."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_se: no values")
    se = float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(np.mean(v)), se


def paired_bootstrap(
    sel_num: np.ndarray,
    sel_den: np.ndarray,
    ref_num: np.ndarray,
    ref_den: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile interval of diff = mean_s m(sel_s) - mean_s m(ref_s), resampling seeds and examples.

    Inputs are (S, E): row s of sel is paired with row s of ref, columns are the same test examples.
    A replicate draws seed counts c (S,) and example counts w (E,) from multinomials - the same for
    sel and ref, and w the same for every seed - so that

        m*_s = (num_s . w) / (den_s . w),    diff* = sum_s c_s (m*sel_s - m*ref_s) / S.

    All replicates at once are matrix products (S, E) @ (E, B); B is chunked to bound memory.
    """
    arrays = [np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (sel_num, sel_den, ref_num, ref_den)]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"paired_bootstrap: shapes differ: {[a.shape for a in arrays]}")
    sn, sd, rn, rd = arrays
    n_seeds, n_ex = sn.shape
    ref_point = float(np.mean(rn.sum(1) / rd.sum(1)))
    diff = float(np.mean(sn.sum(1) / sd.sum(1))) - ref_point

    rng = np.random.default_rng(seed)
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot).T / n_seeds  # (S, B)
    chunk = max(1, int(4_000_000 // max(n_ex, 1)))
    d_boot, r_boot = np.empty(n_boot), np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        w = rng.multinomial(n_ex, np.full(n_ex, 1.0 / n_ex), size=stop - start).T.astype(np.float64)  # (E, b)
        c = seed_w[:, start:stop]
        m_sel = (sn @ w) / (sd @ w)  # (S, b)
        m_ref = (rn @ w) / (rd @ w)
        r_boot[start:stop] = (c * m_ref).sum(0)
        d_boot[start:stop] = (c * m_sel).sum(0) - r_boot[start:stop]

    q = [(1 - level) / 2, (1 + level) / 2]
    lo, hi = np.quantile(d_boot, q)
    rel_lo, rel_hi = np.quantile(d_boot / r_boot, q)
    return {
        "diff": diff,
        "lo": float(lo),
        "hi": float(hi),
        "rel": diff / ref_point,
        "rel_lo": float(rel_lo),
        "rel_hi": float(rel_hi),
        "n_boot": int(n_boot),
        "level": float(level),
    }


def seeds_won(sel_metrics: np.ndarray, ref_metrics: np.ndarray, lower_is_better: bool = True) -> float:
    """Share of paired seeds where the selector is strictly better (beyond float rounding): needs no noise model."""
    s, r = np.asarray(sel_metrics, dtype=np.float64), np.asarray(ref_metrics, dtype=np.float64)
    if s.shape != r.shape or s.size == 0:
        raise ValueError(f"seeds_won: need equal, non-empty shapes, got {s.shape} and {r.shape}")
    tie = np.isclose(s, r, rtol=1e-12, atol=0.0)  # the same metric summed in another order is not a win
    better = (s < r if lower_is_better else s > r) & ~tie
    return float(np.mean(better))


def random_equivalent(
    ref_tokens: np.ndarray, ref_values: np.ndarray, value: float, lower_is_better: bool = True
) -> dict:
    """Tokens T* at which random's curve reaches `value`, linear in log(tokens) between its points.

    In range: the smallest T* where the piecewise-linear curve (points sorted by tokens) equals value.
    Better than every random point: extrapolate the last (most tokens) segment; worse than every point:
    extrapolate the first. Extrapolation needs that segment to improve with tokens, else tokens=None,
    as with a single random point. Returns {"tokens": T* or None, "extrapolated": bool}.
    """
    t = np.asarray(ref_tokens, dtype=np.float64)
    y = np.asarray(ref_values, dtype=np.float64)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError(f"random_equivalent: tokens {t.shape} and values {y.shape} must be 1-D, same length")
    if np.any(t <= 0):
        raise ValueError("random_equivalent: tokens must be positive (the curve is in log tokens)")
    ut, inv = np.unique(t, return_inverse=True)  # sorted; equal token counts share their mean value
    y = np.bincount(inv, weights=y) / np.bincount(inv)
    x = np.log(ut)
    if x.size < 2:
        return {"tokens": None, "extrapolated": False}

    if y.min() <= value <= y.max():
        for i in range(x.size - 1):
            y0, y1 = y[i], y[i + 1]
            if min(y0, y1) <= value <= max(y0, y1):
                frac = 0.0 if y1 == y0 else (value - y0) / (y1 - y0)
                return {"tokens": float(np.exp(x[i] + frac * (x[i + 1] - x[i]))), "extrapolated": False}

    better_than_all = value < y.min() if lower_is_better else value > y.max()
    i = x.size - 2 if better_than_all else 0
    slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
    improving = slope < 0 if lower_is_better else slope > 0
    if not improving:
        return {"tokens": None, "extrapolated": True}
    return {"tokens": float(np.exp(x[i] + (value - y[i]) / slope)), "extrapolated": True}


def verdict(lo: float, hi: float, lower_is_better: bool = True, level: float = 0.95, reference: str = "random") -> str:
    """Read the interval of diff = selector - reference: it excludes 0 on one side, or it does not."""
    pct = f"{100 * level:g} %"
    better, worse = (hi < 0, lo > 0) if lower_is_better else (lo > 0, hi < 0)
    if better:
        return f"beats {reference} ({pct})"
    if worse:
        return f"worse than {reference} ({pct})"
    return "no difference detected"


def _per_model(results: list[ModelResult]) -> pd.DataFrame:
    """One row per model: selector, budget, seed, tokens, metric; checks every model has the same E."""
    if not results:
        raise ValueError("no model results")
    lengths = {len(r.num) for r in results}
    if len(lengths) != 1:
        raise ValueError(f"models are scored on different numbers of test examples: {sorted(lengths)}")
    rows = [
        {
            "selector": r.selector,
            "budget": r.budget,
            "seed": r.seed,
            "tokens": r.tokens,
            "steps": r.steps,
            "learning_rate": r.learning_rate,
            "metric": metric(r.num, r.den),
        }
        for r in results
    ]
    df = pd.DataFrame(rows)
    dup = df.duplicated(["selector", "budget", "seed"])
    if dup.any():
        first = df[dup].iloc[0]
        raise ValueError(f"duplicate result for {first['selector']}@{first['budget']} seed {first['seed']}")
    return df


def evidence_table(
    results: list[ModelResult],
    lower_is_better: bool = True,
    reference: str = "random",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    cost: str = "tokens",
) -> pd.DataFrame:
    """One row per (selector, budget): mean over seeds, paired interval vs the reference, cost in random's units.

    mean/se/tokens/steps use all of a row's seeds; the comparison uses the seeds it shares with the reference
    at the same budget (n_paired). Reference rows carry NaN comparisons and verdict "reference".
    ``cost``: the axis of the random-equivalent multiplier, "tokens" (what each selection used) or "examples"
    (the budget: at equal examples, random needs random_equiv_x times the examples to match).
    """
    models = _per_model(results)
    by_key = {(r.selector, r.budget, r.seed): r for r in results}
    ref_models = models[models["selector"] == reference].assign(examples=lambda d: d["budget"].astype(float))
    ref_curve = ref_models.groupby("budget")[["tokens", "examples", "metric"]].mean()
    x_of = "tokens" if cost == "tokens" else "examples"

    rows = []
    for (sel, budget), g in models.groupby(["selector", "budget"], sort=True):
        mean, se = mean_se(g["metric"].to_numpy())
        tokens = float(g["tokens"].mean())
        row = dict.fromkeys(COLUMNS, np.nan)
        row.update(selector=sel, budget=budget, n_seeds=len(g), tokens=tokens, mean=mean, se=se,
                   steps=float(g["steps"].mean()), learning_rate=float(g["learning_rate"].mean()))  # fmt: skip
        if sel == reference:
            row.update(n_paired=len(g), extrapolated=None, verdict="reference")
            rows.append(row)
            continue
        if budget not in ref_curve.index:
            raise ValueError(f"no '{reference}' results at budget {budget} to compare '{sel}' with")
        ref_seeds = set(ref_models.loc[ref_models["budget"] == budget, "seed"])
        paired = sorted(set(g["seed"]) & ref_seeds)
        if not paired:
            raise ValueError(
                f"'{sel}' and '{reference}' at budget {budget} share no seed "
                f"({sorted(g['seed'])} vs {sorted(ref_seeds)}); pairing is by seed"
            )
        s_res = [by_key[(sel, budget, s)] for s in paired]
        r_res = [by_key[(reference, budget, s)] for s in paired]
        boot = paired_bootstrap(
            np.stack([r.num for r in s_res]),
            np.stack([r.den for r in s_res]),
            np.stack([r.num for r in r_res]),
            np.stack([r.den for r in r_res]),
            n_boot=n_boot,
            seed=seed,
            level=level,
        )
        won = seeds_won([metric(r.num, r.den) for r in s_res], [metric(r.num, r.den) for r in r_res], lower_is_better)
        eq = random_equivalent(ref_curve[x_of].to_numpy(), ref_curve["metric"].to_numpy(), mean, lower_is_better)
        own = tokens if cost == "tokens" else float(budget)
        row.update(
            n_paired=len(paired),
            diff=boot["diff"],
            lo=boot["lo"],
            hi=boot["hi"],
            rel_pct=100 * boot["rel"],
            rel_lo_pct=100 * boot["rel_lo"],
            rel_hi_pct=100 * boot["rel_hi"],
            seeds_won=won,
            random_equiv_cost=np.nan if eq["tokens"] is None else eq["tokens"],
            random_equiv_x=np.nan if eq["tokens"] is None else eq["tokens"] / own,
            extrapolated=eq["extrapolated"],
            verdict=verdict(boot["lo"], boot["hi"], lower_is_better, level, reference),
        )
        rows.append(row)

    df = pd.DataFrame(rows, columns=COLUMNS)
    order = df["selector"].ne(reference)
    return (
        (df.assign(_ref_last=order).sort_values(["budget", "_ref_last", "selector"], kind="stable"))
        .drop(columns="_ref_last")
        .reset_index(drop=True)
    )


# -- length-matched controls (select/length_matched.py) -----------------------------------------------------
CONTROL = "length_matched"


def _variant_config(variants: dict, name: str) -> dict:
    cfg = dict(variants.get(name) or {})
    cfg.setdefault("selector", name)
    return cfg


def length_controls(variants: dict[str, dict], run: list[str]) -> dict[str, str]:
    """{selector variant: its length-matched control variant}, both among ``run``.

    A control is a variant ``{selector: length_matched, of: {selector: ..., **params}, ...}``; it controls the
    variant whose configuration equals its ``of`` plus its own variant-level keys (query, filter, ...): the
    same selection, matched in length by random draws.
    """
    out: dict[str, str] = {}
    for ctrl in run:
        cfg = _variant_config(variants, ctrl)
        if cfg.get("selector") != CONTROL:
            continue
        outer = {k: v for k, v in cfg.items() if k not in ("selector", "of", "bins")}
        inner = {**(cfg.get("of") or {"selector": "random"}), **outer}
        for sel in run:
            if sel != ctrl and sel not in out and _variant_config(variants, sel) == inner:
                out[sel] = ctrl
    return out


def control_table(
    results: list[ModelResult],
    controls: dict[str, str],
    lower_is_better: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    cost: str = "tokens",
) -> pd.DataFrame:
    """evidence_table's rows of each selector against its control instead of random, with a ``reference`` column.

    Pairs by seed and test example as against random; the cost columns read the control's curve ("the
    control needs 1.3x the tokens"). Selectors without results, or whose control has none, are left out.
    """
    frames = []
    for sel, ctrl in sorted(controls.items()):
        sub = [r for r in results if r.selector in (sel, ctrl)]
        if {r.selector for r in sub} != {sel, ctrl}:
            continue
        df = evidence_table(sub, lower_is_better, reference=ctrl, n_boot=n_boot, seed=seed, level=level, cost=cost)
        frames.append(df[df["selector"] == sel].assign(reference=ctrl))
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "reference"])
    return pd.concat(frames, ignore_index=True)


def control_lines(df: pd.DataFrame, metric_name: str = "NLL", budget_unit: str = "tokens") -> list[str]:
    """verdict_lines of a control_table, each row read against its own control."""
    return [
        line
        for ref, g in df.groupby("reference", sort=True)
        for line in verdict_lines(g, metric_name, budget_unit, reference=ref)
    ]


def verdict_lines(
    df: pd.DataFrame, metric_name: str = "NLL", budget_unit: str = "tokens", reference: str = "random"
) -> list[str]:
    """One sentence per compared row: verdict, relative difference with its interval, seeds won, token cost."""
    lines = []
    for r in df[df["verdict"] != "reference"].itertuples(index=False):
        won = int(round(r.seeds_won * r.n_paired))
        if pd.isna(r.random_equiv_x):
            cost = f"{reference}-equivalent {budget_unit} out of reach"
        else:
            approx = "~" if r.extrapolated else ""
            note = " (extrapolated)" if r.extrapolated else ""
            cost = f"{reference} needs {approx}{r.random_equiv_x:.1f}x the {budget_unit}{note}"
        lines.append(
            f"{r.selector} @ {r.budget} {budget_unit}: {r.verdict}: {metric_name} {r.rel_pct:+.2f} % "
            f"[{r.rel_lo_pct:+.2f}, {r.rel_hi_pct:+.2f}], won {won}/{r.n_paired} seeds, {cost}"
        )
    return lines


def tokens_curve(results: list[ModelResult], level: float = 0.95) -> pd.DataFrame:
    """Per selector and budget: mean tokens and mean metric over seeds, with the half-width of its t-interval.

    The half-width is t_{(1+level)/2, n-1} * se of the mean over seeds; NaN for a single seed. Rows sorted by
    selector, then tokens: the points of the metric-vs-tokens plot (infosift.plots.plot_vs_tokens).
    """
    rows = []
    for (sel, budget), b in _per_model(results).groupby(["selector", "budget"], sort=True):
        mean, se = mean_se(b["metric"].to_numpy())
        half = stats.t.ppf((1 + level) / 2, len(b) - 1) * se if len(b) > 1 else np.nan
        rows.append({"selector": sel, "budget": budget, "tokens": b["tokens"].mean(), "mean": mean, "half": half})
    df = pd.DataFrame(rows, columns=["selector", "budget", "tokens", "mean", "half"])
    return df.sort_values(["selector", "tokens", "mean"], kind="stable").reset_index(drop=True)
