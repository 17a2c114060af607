"""Every figure infosift draws: compare's metric-vs-budget and metric-vs-tokens plots, FisherSFT's synthetic study,
the FisherSketch alignment heatmap, the learning-rate sweep, and a stand-in for a metric not computed.

Each draws on a ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot global state: nothing leaks between
figures or needs closing) and saves it as a PNG to the path it is given; the data comes in as plain tables, made
by the module whose numbers they are (infosift.evidence.tokens_curve, infosift.synthetic.summarize...).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # no project module here: a stage that draws one figure does not depend on the others' data
    import pandas as pd


def plot_metric(df: pd.DataFrame, metric: str, out: str | Path, lower_is_better: bool = False) -> None:
    """Metric vs budget, one line per (selector, loss); the base model as a dashed reference line.

    ``df``: compare's results table (infosift.compare.results_table), ``<metric>_stderr`` as error bars if there.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    tuned = df[df["selector"] != "base"]
    for (selector, loss), g in tuned.groupby(["selector", "loss"], sort=True):
        g = g.sort_values("budget")
        err = g[f"{metric}_stderr"] if f"{metric}_stderr" in g else None
        label = selector if loss == "nll" else f"{selector} ({loss})"
        ax.errorbar(g["budget"], g[metric], yerr=err, marker="o", capsize=3, label=label)
    base = df[df["selector"] == "base"]
    if len(base) and metric in base:
        ax.axhline(float(base[metric].iloc[0]), color="gray", linestyle="--", label="base (no fine-tune)")
    ax.set_xlabel("budget (examples fine-tuned on)")
    ax.set_ylabel(metric + (" (lower is better)" if lower_is_better else ""))
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png")


def plot_vs_tokens(
    curve: pd.DataFrame,
    out_path: str | Path,
    metric_name: str = "held-out NLL per token",
    lower_is_better: bool = True,
    level: float = 0.95,
    reference: str = "random",
) -> None:
    """Mean metric over seeds vs training tokens (log x), one line per selector, t-interval error bars.

    ``curve``: infosift.evidence.tokens_curve's points (selector, tokens, mean, half), computed at ``level``.
    The ``reference`` selector is drawn black and dashed, the others compare with it.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), dpi=120)
    ax = fig.subplots()
    for sel, g in curve.groupby("selector", sort=True):
        style = {"color": "black", "linestyle": "--", "zorder": 3} if sel == reference else {}
        x, y, err = (g[c].to_numpy(dtype=float) for c in ("tokens", "mean", "half"))
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=sel, **style)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens used (mean over seeds, log scale)")
    ax.set_ylabel(metric_name + (" (lower is better)" if lower_is_better else " (higher is better)"))
    ax.set_title(f"{metric_name} vs training tokens ({100 * level:g} % t-interval over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, format="png")


def prediction_error_plot(summary: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """FisherSFT's synthetic study: mean prediction error vs n per selector, log-log, error bars = standard error.

    ``summary``: infosift.synthetic.summarize's table (selector, n, error, error_se).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for name, part in summary.groupby("selector", sort=False):
        ax.errorbar(part.n, part.error, yerr=part.error_se, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(summary.n.unique()), [str(n) for n in sorted(summary.n.unique())])
    ax.set_xlabel("sentences selected n")
    ax.set_ylabel("mean ||p_Θ̂(x) − p_Θ(x)||₁ on test tokens")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


def alignment_heatmap(names: list[str], mat: np.ndarray, path: str | Path) -> None:
    """A PNG of the (len(names), len(names)) alignment matrix, each cell labelled with its value.

    The colour scale runs to 1 (a corpus against itself) from 0, or lower when some alignment is negative.
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    fig = Figure(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(mat, vmin=min(0.0, float(mat.min())), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="head Fisher alignment (FisherSketch cosine)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


def not_computed(metric: str, path: str | Path, why: str = "its evaluate suite is off in params.yaml") -> None:
    """A PNG saying ``metric`` was not computed in this run.

    compare declares one plot per metric as a DVC output; a run with a suite switched off (GSM8K on the
    evidence profile) must still write it, or DVC fails the stage after it did all its work.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2))
    fig.text(0.5, 0.5, f"{metric}: not computed in this run\n({why})", ha="center", va="center")
    fig.savefig(path, format="png", dpi=100)


def lr_sweep_plot(rows: list[dict], chosen: float, path: str | Path) -> None:
    """Validation NLL against learning rate (log axis), the seeds' range as a band, the chosen rate marked."""
    from matplotlib.figure import Figure

    lrs = [r["learning_rate"] for r in rows]
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    ax.fill_between(lrs, [r["min"] for r in rows], [r["max"] for r in rows], alpha=0.2, label="seeds' range")
    ax.plot(lrs, [r["validation_nll"] for r in rows], "o-", label="mean over seeds")
    ax.axvline(chosen, color="k", ls="--", lw=1, label=f"chosen {chosen:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation NLL per token")
    ax.set_title("learning-rate sweep on random selections")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
