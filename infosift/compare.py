"""Side-by-side results: a table (markdown + CSV) and one PNG per metric, metric vs budget per selector."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

KEY_COLUMNS = ["variant", "selector", "budget", "loss"]


def results_table(rows: list[dict]) -> pd.DataFrame:
    """One row per evaluated model; the base model has budget 0 and selector 'base'."""
    df = pd.DataFrame(rows)
    front = [c for c in KEY_COLUMNS if c in df.columns]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(["selector", "loss", "budget"], kind="stable").reset_index(drop=True)


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub table without the tabulate dependency."""

    def fmt(x: object) -> str:
        if isinstance(x, float):
            return f"{x:.{digits}f}"
        return str(x)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_metric(df: pd.DataFrame, metric: str, out: str | Path, lower_is_better: bool = False) -> None:
    """Metric vs budget, one line per (selector, loss); the base model as a dashed reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
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
    fig.savefig(out)
    plt.close(fig)
