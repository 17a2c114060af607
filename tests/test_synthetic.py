"""FisherSFT's synthetic experiment: generator, Newton ridge MLE, metric, experiment loop, stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infosift import synthetic as syn
from infosift.select import available

ROOT = Path(__file__).resolve().parents[1]


# -- generator -------------------------------------------------------------------------------------
def test_sentences_scale_and_coherence():
    """Token norms track s_i whatever ρ_i; only coherent sentences keep a large mean (what SentenceOD sees)."""
    rng = np.random.default_rng(0)
    x = syn.make_sentences(rng, 2000, 10, 10, scale_range=(0.5, 2.0))
    norms = np.linalg.norm(x, axis=-1)
    rms = np.sqrt((norms**2).mean(axis=1))  # ≈ s_i, within chi-square noise of M = 10 tokens
    assert x.shape == (2000, 10, 10)
    assert 0.5 * 0.6 < rms.min() < 0.5 * 1.2 and 2.0 * 0.8 < rms.max() < 2.0 * 1.4
    mean_norm = np.linalg.norm(x.mean(axis=1), axis=-1) / norms.mean(axis=1)
    assert mean_norm.min() < 0.3 and mean_norm.max() > 0.95  # incoherent ≈ 1/√M, coherent ≈ 1


def test_problem_shapes_and_determinism():
    a = syn.make_problem(3, pool_size=50, test_size=20, tokens_per_sentence=7)
    b = syn.make_problem(3, pool_size=50, test_size=20, tokens_per_sentence=7)
    assert a.theta.shape == (10, 20) and len(a.pool) == 50 and a.pool.values.shape == (350, 10)
    assert (a.pool.lengths == 7).all() and a.test_x.shape == (140, 10)
    assert a.labels.shape == (350,) and a.labels.min() >= 0 and a.labels.max() < 20
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.pool.values, b.pool.values)


def test_labels_follow_the_softmax():
    """Empirical class frequencies at one x match softmax(Θᵀx) (5 sigma of a binomial)."""
    rng = np.random.default_rng(1)
    theta = rng.standard_normal((4, 5))
    x = np.tile(rng.standard_normal(4), (40000, 1))
    freq = np.bincount(syn.sample_labels(rng, theta, x), minlength=5) / len(x)
    p = syn.softmax(x[:1] @ theta)[0]
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / len(x)))


# -- estimator -------------------------------------------------------------------------------------
def test_hessian_matches_finite_differences():
    rng = np.random.default_rng(2)
    x, theta = rng.standard_normal((30, 3)), 0.5 * rng.standard_normal((3, 4))
    onehot = np.eye(4)[rng.integers(0, 4, 30)]

    def grad(t):
        return (x.T @ (syn.softmax(x @ t) - onehot) + 0.7 * t).ravel()

    h = syn._hessian(x, syn.softmax(x @ theta), 0.7)
    eps, num = 1e-6, np.zeros((12, 12))
    for a in range(12):
        e = np.zeros(12)
        e[a] = eps
        num[:, a] = (grad(theta + e.reshape(3, 4)) - grad(theta - e.reshape(3, 4))) / (2 * eps)
    np.testing.assert_allclose(h, num, atol=1e-6)


def test_fit_is_the_ridge_minimiser():
    """Stationary (gradient ≈ 0), centred (Σ_k θ̂_k = 0) and no random perturbation does better."""
    prob = syn.make_problem(4, pool_size=100, test_size=1)
    x, y = prob.pool.values, prob.labels
    theta = syn.fit_mle(x, y, 20, ridge=2.0)
    onehot = np.eye(20)[y]
    grad = x.T @ (syn.softmax(x @ theta) - onehot) + 2.0 * theta
    assert np.abs(grad).max() < 1e-6
    assert np.abs(theta.sum(axis=1)).max() < 1e-8
    f = syn._objective(theta, x, onehot, 2.0)
    rng = np.random.default_rng(0)
    assert all(syn._objective(theta + 1e-3 * rng.standard_normal(theta.shape), x, onehot, 2.0) > f for _ in range(20))
    with pytest.raises(ValueError, match="ridge"):
        syn.fit_mle(x, y, 20, ridge=0.0)


def test_mle_recovers_theta_on_lots_of_data():
    prob = syn.make_problem(5, pool_size=2000, test_size=200)
    theta = syn.fit_mle(prob.pool.values, prob.labels, 20, ridge=1.0)
    mean_err, max_err = syn.prediction_error(theta, prob.theta, prob.test_x)
    assert mean_err < 0.08 and max_err < 0.6  # vs ≈ 0.36 mean error at 20 random sentences
    centred = prob.theta - prob.theta.mean(axis=1, keepdims=True)  # the softmax-identifiable part
    assert np.linalg.norm(theta - centred) / np.linalg.norm(centred) < 0.25


def test_prediction_error_metric():
    theta = np.random.default_rng(0).standard_normal((3, 4))
    x = np.random.default_rng(1).standard_normal((50, 3))
    assert syn.prediction_error(theta, theta, x) == (0.0, 0.0)
    assert syn.prediction_error(theta + 5.0, theta, x)[1] < 1e-12  # a common shift is invisible
    far = syn.prediction_error(100 * theta, -100 * theta, x)
    assert 1.9 < far[0] <= 2.0  # disjoint argmax -> L1 near its maximum 2


# -- experiment ------------------------------------------------------------------------------------
SMALL = dict(pool_size=200, test_size=50, tokens_per_sentence=5)


def test_table_shape_and_error_falls_with_n():
    table = syn.run_experiment({"random": {}}, [10, 40, 160], [0, 1, 2], **SMALL)
    assert len(table) == 9
    assert {"seed", "selector", "n", "tokens", "error", "max_error", "select_s", "fit_s"} <= set(table)
    assert (table.tokens == table.n * 5).all()
    summ = syn.summarize(table)
    assert list(summ.n) == [10, 40, 160] and (summ.seeds == 3).all()
    assert (summ.ratio == 1.0).all() and (summ.wins == 0.0).all()  # the reference against itself
    err = summ.error.to_numpy()
    assert err[0] > err[1] > err[2] and err[2] < 0.7 * err[0]
    md, metrics = syn.report(table)
    assert md.count("\n") == 2 + 3 and metrics["best_selector"] == {"10": "random", "40": "random", "160": "random"}


@pytest.fixture
def one_torch_thread():
    """d = 10 torch ops are tiny: a thread pool only adds sync cost (10x slower on a busy 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fishersft_beats_random_on_every_seed(one_torch_thread):
    """Heterogeneous token norms: FisherSFT buys the informative sentences, random buys average ones."""
    assert {"fishersft", "random"} <= set(available()), f"selectors not registered: {available()}"
    seeds = list(range(6))
    table = syn.run_experiment({"random": {}, "fishersft": {"ridge": 1.0}}, [20, 60], seeds, **SMALL)
    md, metrics = syn.report(table)
    for n in ("20", "60"):
        assert metrics["fishersft_over_random"][n] < 0.85, md
        assert metrics["fishersft_wins_vs_random"][n] == 1.0, md
    assert metrics["fishersft_best_at_every_n"]


# -- stage -----------------------------------------------------------------------------------------
def run_stage(tmp_path: Path, section: dict | None) -> subprocess.CompletedProcess:
    if section is not None:
        (tmp_path / "params.yaml").write_text(json.dumps({"synthetic": section}))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "stages.synthetic"], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_stage_writes_outputs(tmp_path):
    sels = {"random": {}, "fishersft": {"ridge": 1.0}}
    section = dict(SMALL, budgets=[10, 20], seeds=2, selectors=sels)
    proc = run_stage(tmp_path, section)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "results/synthetic"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "prediction_error.png", "table.csv", "table.md"]
    assert (out / "prediction_error.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "table.csv").read_text().splitlines()) == 1 + 2 * 2 * len(sels)
    assert json.loads((out / "metrics.json").read_text())["seeds"] == 2


@pytest.mark.parametrize(
    "section, message",
    [
        (dict(budgets=[10], seeds=1), "synthetic.selectors: required"),
        (dict(SMALL, budgets=[500], seeds=1, selectors={"random": {}}), "pool_size"),
        (dict(SMALL, budgets=[10], seeds="x", selectors={"random": {}}), "synthetic.seeds: must be a whole number"),
        (dict(SMALL, budgets=[10], seeds=1, scale_range=[2, 1], selectors={"random": {}}), "scale_range"),
    ],
)
def test_stage_config_rejects_bad_params(section, message):
    from stages._common import StageError
    from stages.synthetic import config

    with pytest.raises(StageError, match=message):
        config(section)


def test_stage_bad_selector_one_line_no_outputs(tmp_path):
    proc = run_stage(tmp_path, dict(SMALL, budgets=[10], seeds=1, selectors={"nope": {}}))
    assert proc.returncode != 0
    assert "unknown selector" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "results/synthetic").exists()
