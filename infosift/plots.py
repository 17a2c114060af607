"""Figures written by stages: the FisherSketch alignment heatmap, the learning-rate sweep, and a stand-in for a
metric not computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
