"""Side-by-side results: one table of every evaluated model, as markdown (its plots: infosift.plots)."""

from __future__ import annotations

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
