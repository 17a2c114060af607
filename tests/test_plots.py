"""Figures hold the data's values (read back from the drawn figure), and dvc.yaml's data plots render the CSVs.

Each plotting function saves a matplotlib Figure; the tests catch that figure as it is saved and read its
artists back (image array, line data, texts), so a plot of the wrong column or a swapped axis fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.figure import Figure

from infosift.plots import (
    alignment_heatmap,
    lr_sweep_plot,
    not_computed,
    plot_metric,
    plot_vs_tokens,
    prediction_error_plot,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def saved(monkeypatch) -> list[Figure]:
    """Every Figure saved while the test runs, in order (still saved to disk as usual)."""
    figures: list[Figure] = []
    original = Figure.savefig

    def spy(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figures


def test_alignment_heatmap_draws_the_matrix_and_its_values(tmp_path, saved):
    rng = np.random.default_rng(0)
    names = ["target", "a", "b", "c"]
    mat = rng.uniform(-0.3, 1.0, (4, 4))
    alignment_heatmap(names, mat, tmp_path / "alignment.png")
    assert (tmp_path / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = saved[-1].axes[0]
    image = ax.images[0]
    np.testing.assert_array_equal(np.asarray(image.get_array()), mat)
    assert image.get_clim() == (pytest.approx(min(0.0, mat.min())), 1.0)  # negative alignments stay on the scale
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(i, j): f"{mat[i, j]:.2f}" for i in range(4) for j in range(4)}
    assert [t.get_text() for t in ax.get_xticklabels()] == names == [t.get_text() for t in ax.get_yticklabels()]


def test_not_computed_names_the_metric(tmp_path, saved):
    not_computed("gsm8k_exact_match_strict", tmp_path / "g.png", why="the suite is off")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    text = " ".join(t.get_text() for t in saved[-1].texts)
    assert "gsm8k_exact_match_strict" in text and "the suite is off" in text


def error_bars(container) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) ends of an errorbar container's vertical bars, read from the drawn segments."""
    segments = container.lines[2][0].get_segments()
    return np.array([seg[0][1] for seg in segments]), np.array([seg[1][1] for seg in segments])


def test_metric_plot_draws_each_selector_and_the_base_line(tmp_path, saved):
    rng = np.random.default_rng(1)
    rows = [{"selector": "base", "loss": "-", "budget": 0, "nll_per_token": 1.5, "nll_per_token_stderr": 0.0}]
    rows += [
        {"selector": s, "loss": loss, "budget": b, "nll_per_token": float(rng.uniform(1, 1.4)),
         "nll_per_token_stderr": float(rng.uniform(0.01, 0.05))}
        for s, loss in (("random", "nll"), ("fishersft", "nll"), ("fishersft", "infosift")) for b in (200, 50, 100)
    ]  # fmt: skip
    df = pd.DataFrame(rows)
    plot_metric(df, "nll_per_token", tmp_path / "m.png", lower_is_better=True)
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    ax = saved[-1].axes[0]
    drawn = {c.get_label(): c for c in ax.containers}
    assert set(drawn) == {"random", "fishersft", "fishersft (infosift)"}
    for label, container in drawn.items():
        sel, _, loss = label.partition(" (")
        g = df[(df["selector"] == sel) & (df["loss"] == (loss.rstrip(")") or "nll"))].sort_values("budget")
        line = container.lines[0]
        np.testing.assert_array_equal(line.get_xdata(), g["budget"])
        np.testing.assert_array_equal(line.get_ydata(), g["nll_per_token"])
        lo, hi = error_bars(container)
        np.testing.assert_allclose(lo, g["nll_per_token"] - g["nll_per_token_stderr"])
        np.testing.assert_allclose(hi, g["nll_per_token"] + g["nll_per_token_stderr"])
    base = [ln for ln in ax.lines if ln.get_label() == "base (no fine-tune)"]
    assert len(base) == 1 and list(base[0].get_ydata()) == [1.5, 1.5]
    assert "lower is better" in ax.get_ylabel()


def test_evidence_plot_draws_the_mean_over_seeds_at_the_mean_tokens(tmp_path, saved):
    from scipy import stats

    from infosift.evidence import ModelResult, tokens_curve

    rng = np.random.default_rng(2)
    den = rng.integers(5, 20, 30).astype(float)
    results = [
        ModelResult(sel, budget, seed, budget - 10 * seed, rng.uniform(0.5, 2.0, 30) * den, den)
        for sel in ("random", "fishersft") for budget in (1000, 4000) for seed in (0, 1, 2)
    ]  # fmt: skip
    plot_vs_tokens(tokens_curve(results, level=0.9), tmp_path / "e.png", level=0.9)
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    ax = saved[-1].axes[0]
    drawn = {c.get_label(): c for c in ax.containers}
    assert set(drawn) == {"random", "fishersft"} and ax.get_xscale() == "log"
    for sel, container in drawn.items():
        xs, ys, halves = [], [], []
        for budget in (1000, 4000):
            mine = [r for r in results if r.selector == sel and r.budget == budget]
            per_seed = [r.num.sum() / r.den.sum() for r in mine]
            xs.append(np.mean([r.tokens for r in mine]))
            ys.append(np.mean(per_seed))
            halves.append(stats.t.ppf(0.95, len(mine) - 1) * np.std(per_seed, ddof=1) / np.sqrt(len(mine)))
        line = container.lines[0]
        np.testing.assert_allclose(line.get_xdata(), xs)
        np.testing.assert_allclose(line.get_ydata(), ys)
        lo, hi = error_bars(container)
        np.testing.assert_allclose(hi - lo, 2 * np.array(halves))
    assert drawn["random"].lines[0].get_linestyle() == "--"  # the reference stands out


def test_synthetic_figure_draws_the_mean_error_per_selector(tmp_path, saved):
    """FisherSFT's synthetic study: one line per selector, x = n, y = mean error over seeds (from the raw table)."""
    from infosift.synthetic import summarize

    rng = np.random.default_rng(4)
    table = pd.DataFrame(
        [{"selector": sel, "n": n, "seed": seed, "error": float(rng.uniform(0.1, 1)), "max_error": 1.0}
         for sel in ("random", "fishersft") for n in (20, 40, 80) for seed in range(3)]
    )  # fmt: skip
    prediction_error_plot(summarize(table), tmp_path / "p.png", title="d=10")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    ax = saved[-1].axes[0]
    drawn = {c.get_label(): c for c in ax.containers}
    assert set(drawn) == {"random", "fishersft"} and ax.get_title() == "d=10"
    for sel, container in drawn.items():
        mine = table[table["selector"] == sel]
        errors = [mine[mine["n"] == n]["error"].to_numpy() for n in (20, 40, 80)]
        line = container.lines[0]
        np.testing.assert_array_equal(line.get_xdata(), [20, 40, 80])
        np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [e.mean() for e in errors])
        lo, hi = error_bars(container)
        np.testing.assert_allclose(hi - lo, [2 * e.std(ddof=1) / np.sqrt(len(e)) for e in errors])


def test_lr_sweep_plot_draws_the_mean_the_band_and_the_chosen_rate(tmp_path, saved):
    rng = np.random.default_rng(5)
    rows = []
    for lr in (1e-5, 1e-4, 1e-3):
        nll = rng.uniform(1.0, 2.0, 3)
        rows.append({"learning_rate": lr, "validation_nll": nll.mean(), "min": nll.min(), "max": nll.max()})
    lr_sweep_plot(rows, 1e-4, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    ax = saved[-1].axes[0]
    mean = next(ln for ln in ax.lines if ln.get_label() == "mean over seeds")
    np.testing.assert_array_equal(mean.get_xdata(), [r["learning_rate"] for r in rows])
    np.testing.assert_array_equal(mean.get_ydata(), [r["validation_nll"] for r in rows])
    chosen = next(ln for ln in ax.lines if ln.get_label().startswith("chosen"))
    assert list(chosen.get_xdata()) == [1e-4, 1e-4] and ax.get_xscale() == "log"
    (band,) = ax.collections
    corners = band.get_paths()[0].vertices
    for r in rows:  # the band runs through each rate's lowest and highest seed
        for y in (r["min"], r["max"]):
            assert np.isclose(corners, [r["learning_rate"], y], rtol=1e-12, atol=0).all(axis=1).any(), (r, y)


# -- DVC data plots ---------------------------------------------------------------------------------------------
def data_plots() -> dict[str, dict]:
    """dvc.yaml's top-level plots that draw the compare stage's CSVs: id -> {x, y: {file: field}, ...}."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    out = {}
    for entry in plots:
        if isinstance(entry, dict):
            ((pid, spec),) = entry.items()
            if isinstance(spec, dict) and isinstance(spec.get("y"), dict):
                out[pid] = spec
    return out


def test_data_plots_name_columns_the_compare_stage_writes():
    """Every CSV plot names an x and y column of the table compare writes (the committed result files)."""
    plots = data_plots()
    files = {f for spec in plots.values() for f in spec["y"]}
    assert files == {"results/compare/evidence.csv", "results/compare/table.csv"}
    for pid, spec in plots.items():
        for csv, field in spec["y"].items():
            columns = pd.read_csv(ROOT / csv, nrows=0).columns
            assert spec["x"] in columns and field in columns, (pid, csv, list(columns))


@pytest.mark.skipif(shutil.which("dvc") is None, reason="needs the dvc command")
def test_dvc_renders_the_data_plots_of_tiny_tables(tmp_path):
    """`dvc plots show --json` in a fresh repo with dvc.yaml's plots draws the values of the CSVs there."""
    rng = np.random.default_rng(3)
    tables = {}
    for csv in ("results/compare/evidence.csv", "results/compare/table.csv"):
        columns = pd.read_csv(ROOT / csv, nrows=0).columns
        df = pd.DataFrame(rng.uniform(0, 100, (4, len(columns))).round(3), columns=columns)
        (tmp_path / csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(tmp_path / csv, index=False)
        tables[csv] = df
    plots = data_plots()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{k: v} for k, v in plots.items()]}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    proc = subprocess.run(["dvc", "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout)["data"]
    assert set(rendered) == set(plots)
    for pid, spec in plots.items():
        ((csv, field),) = spec["y"].items()
        content = rendered[pid][0]["content"]
        assert content["encoding"]["x"]["field"] == spec["x"] and content["encoding"]["y"]["field"] == field
        assert content["encoding"]["color"]["field"] == "selector"  # the template's: one colour per selector
        values = content["data"]["values"]
        got = [(float(v[spec["x"]]), float(v[field])) for v in values]
        assert got == list(zip(tables[csv][spec["x"]], tables[csv][field], strict=True))
