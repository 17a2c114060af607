"""The quality filter composes in front of every registered selector and keeps the budget invariants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from infosift.quality import save_quality
from infosift.select import SelectionError, available, get_selector
from infosift.select.filtered import Filtered, kept_indices
from stages._common import EXIT_BAD_INPUT
from tests.test_budgets import assert_filled, pool, query_inputs

ROOT = Path(__file__).resolve().parent.parent


def test_kept_indices_drop_the_lowest_scores_by_hand():
    q = np.array([0.5, -1.0, 2.0, -1.0, 0.0, 3.0, 1.0])
    assert kept_indices(q, 0.0).tolist() == list(range(7))
    assert kept_indices(q, 0.3).tolist() == [0, 2, 4, 5, 6]  # floor(2.1) = 2 dropped: the two -1.0
    assert kept_indices(q, 0.2).tolist() == [0, 2, 3, 4, 5, 6]  # one dropped; the tie goes to the lower index
    assert kept_indices(q, 0.99).tolist() == [5]
    for bad in (1.0, 1.5, -0.1, float("nan"), "0.2", True, None):
        with pytest.raises(SelectionError, match="filter drop must be"):
            kept_indices(q, bad)


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("unit", ["examples", "tokens"])
def test_filter_composes_with_every_selector(name, unit):
    f = pool(40, 5, seed=7)
    rng = np.random.default_rng(7)
    quality = rng.standard_normal(40)
    keep = kept_indices(quality, 0.25)
    inputs = query_inputs(name, f, 3)
    costs = f.token_costs if unit == "tokens" else np.ones(40, dtype=np.int64)
    budget = int(costs[keep].sum()) // 3 if unit == "tokens" else 9
    res = Filtered(get_selector(name), quality, 0.25, "pmi").select(f, budget, seed=2, unit=unit, **inputs)
    assert set(res.indices.tolist()) <= set(keep.tolist())  # nothing the filter dropped
    assert_filled(np.searchsorted(keep, res.indices), costs[keep], budget)  # filled within the kept pool
    sub = {k: v[keep] for k, v in inputs.items()}
    alone = get_selector(name).select(f.subset(keep), budget, seed=2, unit=unit, **sub)
    assert res.indices.tolist() == keep[alone.indices].tolist()  # the selector's own picks, mapped back
    assert (res.info["filter_score"], res.info["filter_kept"], res.info["filter_drop"]) == ("pmi", 30, 0.25)
    assert res.info["filter_threshold"] == pytest.approx(quality[keep].min())
    if unit == "examples":
        assert len(res.indices) == budget
        with pytest.raises(SelectionError, match=r"larger than the pool \(30 examples\)"):
            Filtered(get_selector(name), quality, 0.25).select(f, 31, unit=unit, **inputs)


def test_filter_refuses_bad_scores():
    f = pool(10, 3, seed=8)
    with pytest.raises(SelectionError, match="must be finite"):
        Filtered(get_selector("random"), np.r_[np.nan, np.zeros(9)], 0.1, "eos")
    with pytest.raises(SelectionError, match="3 values for a pool of 10"):
        Filtered(get_selector("random"), np.zeros(3), 0.1, "eos").select(f, 2)


def stage(tmp_path: Path, variant: dict) -> subprocess.CompletedProcess:
    """Run stages.select on a 12-example pool with quality scores, one variant named 'v'."""
    f = pool(12, 3, seed=9, dtype=np.float32)
    f.save(tmp_path / "data" / "features" / "pool")
    scores = {k: np.arange(12.0)[::-1] for k in ("pmi", "eos", "partner", "logp", "logp_other")}
    save_quality(tmp_path / "data" / "features" / "quality.npz", f.ids, scores)
    pool_rows = [{"id": i, "prompt": f"q{i}", "response": f"a{i}", "source": "t"} for i in f.ids]  # what was embedded
    (tmp_path / "data" / "download").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "download" / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool_rows))
    cfg = {"select": {"seeds": [0], "budget_unit": "examples", "variants": {"v": variant}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "stages.select", "v", "4"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)


def test_select_stage_records_the_filter_and_refuses_one_that_drops_the_pool(tmp_path):
    proc = stage(tmp_path, {"selector": "length", "filter": {"score": "pmi", "drop": 0.5}})
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "results/select/v-4/seed-0/manifest.json").read_text())
    assert manifest["params"]["filter"] == {"score": "pmi", "drop": 0.5}
    assert manifest["info"]["filter_kept"] == 6 and "quality" in manifest["inputs"]
    assert set(manifest["indices"]) <= set(range(6))  # pmi falls with the index: the first half is kept
    proc = stage(tmp_path, {"selector": "random", "filter": {"score": "pmi", "drop": 1.0}})
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml select.variants.v.filter.drop: filter drop must be in [0, 1) (1 drops the whole pool), "
        "got 1.0"
    ]
    proc = stage(tmp_path, {"selector": "random", "filter": {"score": "ifd", "drop": 0.1}})
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.startswith("error: params.yaml select.variants.v.filter.score")
