"""compare's evidence report: every selector against random at the same budget, per loss, paired by seed and by
test example (infosift/evidence.py), and against its length-matched control where one ran; written as
evidence.md (tables and verdict lines), evidence.csv (every comparison) and nll_vs_tokens*.png.

Reads each model's per-example NLL and trained steps from the workspace ``root`` (infosift/evaluate_results.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from infosift.compare import to_markdown
from infosift.evaluate_results import per_example, trained_steps
from infosift.evidence import (
    ModelResult,
    control_lines,
    control_table,
    evidence_table,
    length_controls,
    tokens_curve,
    verdict_lines,
)
from infosift.plots import not_computed, plot_vs_tokens


def evidence(rows: list[dict], loss: str, n_boot: int, unit: str, root: str | Path = ".") -> tuple:
    """Evidence table, verdict lines and ModelResults for the models fine-tuned with ``loss``.

    ``rows``: compare's rows (variant, selector, budget, seed, loss, train_tokens[, contaminated_share]).
    """
    results, test_ids = [], None
    for row in rows:
        if row["selector"] == "base" or row["loss"] != loss:
            continue
        test_ids, num, den = per_example(row["variant"], test_ids, root)
        steps, lr = trained_steps(row["variant"], root)
        results.append(ModelResult(row["selector"], row["budget"], row["seed"], row["train_tokens"], num, den,
                                   steps=steps, learning_rate=lr))  # fmt: skip
    df = evidence_table(results, lower_is_better=True, n_boot=n_boot, seed=0, cost=unit)
    share: dict[tuple, list[float]] = {}
    for r in rows:
        if "contaminated_share" in r and r["loss"] == loss:
            share.setdefault((r["selector"], r["budget"]), []).append(r["contaminated_share"])
    if share:
        df["contaminated_share"] = [
            float(np.mean(share.get((s, b), [np.nan]))) for s, b in zip(df["selector"], df["budget"], strict=True)
        ]
    return df, verdict_lines(df, metric_name="NLL", budget_unit=unit), results


def write_evidence(
    out: Path,
    rows: list[dict],
    *,
    run: list[str],
    variants: dict,
    seeds: list[int],
    losses: list[str],
    n_boot: int,
    unit: str,
    root: str | Path = ".",
) -> dict[str, float]:
    """evidence.md / evidence.csv / nll_vs_tokens*.png into ``out``; returns the MLflow parent-run metrics.

    ``run``: the variants that ran (the reference, ``random``, among them), ``variants`` their definitions (for the
    length-matched controls), ``seeds`` and ``losses`` as the pipeline ran them, ``unit`` the budget's unit.
    """
    report = [f"# Evidence: each selector against random at the same budget ({unit})\n"]
    frames, metrics = [], {}
    if "random" not in run:
        report.append("No `random` variant in select.run: nothing to compare against.\n")
        not_computed("evidence", out / "nll_vs_tokens.png", why="no random variant in select.run")
    for loss in losses if "random" in run else []:
        ev, lines, results = evidence(rows, loss, n_boot, unit, root)
        ctrl = control_table(results, length_controls(variants, run), n_boot=n_boot, cost=unit)
        both = pd.concat([ev.assign(reference="random"), ctrl]) if len(ctrl) else ev.assign(reference="random")
        frames.append(both.assign(loss=loss))
        report += [f"\n## loss: {loss}\n\n", to_markdown(ev), "\n"] + [f"- {line}\n" for line in lines]
        if len(ctrl):  # each selector against random drawn from the same length bins (select/length_matched.py)
            report += ["\nAgainst its length-matched control:\n\n", to_markdown(ctrl), "\n"]
            report += [f"- {line}\n" for line in control_lines(ctrl, "NLL", unit)]
        name = "nll_vs_tokens.png" if loss == losses[0] else f"nll_vs_tokens_{loss}.png"
        plot_vs_tokens(tokens_curve(results), out / name)
        for r in ev.to_dict("records"):
            if r["verdict"] != "reference":
                key = f"evidence.{r['selector']}-{r['budget']}-{loss}"
                metrics |= {f"{key}.{m}": r[m] for m in ("rel_pct", "rel_lo_pct", "rel_hi_pct", "seeds_won")}
    if frames:
        report.append(
            f"\nIntervals: paired bootstrap over seeds and test examples ({n_boot} replicates, seed 0); "
            f"seeds {seeds}.\n"
        )
    (out / "evidence.md").write_text("".join(report))
    (out / "evidence.csv").write_text(pd.concat(frames).to_csv(index=False) if frames else "")
    return metrics
