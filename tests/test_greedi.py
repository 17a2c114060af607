"""GreeDi (two-round distributed greedy, select/greedi.py) on the local engine: the central greedy at k = 1,
near it at k > 1, seeded partitions, budgets kept, manifests that say how it ran, and one-line errors."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from infosift.features import TokenFeatures
from infosift.select import SelectionError, get_selector
from infosift.select.base import SelectionResult
from infosift.select.greedi import greedi, partition
from stages._common import EXIT_BAD_INPUT, EXIT_TRANSIENT
from tests.test_budgets import pool
from tests.test_stage_errors import assert_one_error_line, run_stage
from tests.test_stochastic_greedy import objective


def spread_pool(n: int = 240, d: int = 16, seed: int = 0) -> TokenFeatures:
    """Sentences of 1..12 tokens whose directions cluster, so which sentence is picked matters."""
    f = pool(n, d, seed)
    centers = np.random.default_rng(seed + 100).standard_normal((6, d))
    topic = np.repeat(centers[np.arange(n) % 6], f.lengths, axis=0)
    return f.with_values(f.values + 1.5 * topic)


@pytest.mark.parametrize("name", ["fishersft", "sentence_od"])
@pytest.mark.parametrize(("unit", "budget"), [("examples", 25), ("tokens", 900)])
def test_one_part_is_the_central_greedy(name, unit, budget):
    f = spread_pool()
    central = get_selector(name, ridge=0.5).select(f, budget, unit=unit)
    one = get_selector(name, ridge=0.5, partitions=1).select(f, budget, seed=3, unit=unit)
    assert one.indices.tolist() == central.indices.tolist()
    np.testing.assert_array_equal(one.gains, central.gains)
    assert (one.info["partitions"], one.info["greedi_winner"], one.info["engine"]) == (1, "part", "local")


@pytest.mark.parametrize("seed", [0, 1])
def test_more_parts_stay_near_the_central_objective(seed):
    f = spread_pool(seed=seed)
    central = get_selector("fishersft").select(f, 30)
    f_central = objective(f, central.indices, 1.0)
    for k in (2, 4, 8):
        res = get_selector("fishersft", partitions=k).select(f, 30, seed=seed)
        assert len(set(res.indices.tolist())) == len(res.indices) == 30
        f_res = objective(f, res.indices, 1.0)  # on the full pool, from scratch
        np.testing.assert_allclose(np.sum(res.gains), f_res, rtol=1e-8)  # gains are the objective's own
        assert f_res >= 0.95 * f_central, (k, f_res, f_central)
        parts = res.info["parts"]
        assert sum(p["rows"] for p in parts) == len(f) and len(parts) == k
        assert f_res >= max(p["objective"] for p in parts) - 1e-9  # never worse than the best part
        assert res.info["union_size"] == 30 * k


def test_a_budget_above_every_part_takes_whole_parts_and_is_central():
    """Each part can hold at most 8 of 10 asked: round 1 keeps all, the union is the pool, round 2 is central."""
    f = spread_pool(30, 8)
    central = get_selector("fishersft").select(f, 10)
    res = get_selector("fishersft", partitions=4).select(f, 10, seed=5)
    assert [p["rows"] for p in res.info["parts"]] == [8, 8, 7, 7]
    assert res.info["union_size"] == 30 and res.info["greedi_winner"] == "union"
    assert res.indices.tolist() == central.indices.tolist()


def test_partition_is_seeded_and_each_seed_its_own_selection():
    parts = partition(50, 3, seed=7)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(50))
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(50, 3, seed=7), strict=True))
    assert not np.array_equal(parts[0], partition(50, 3, seed=8)[0])
    f = spread_pool(300, 12)
    sel = get_selector("fishersft", partitions=5)
    assert sel.deterministic is False and get_selector("fishersft", partitions=1).deterministic is True
    a, b, c = (sel.select(f, 20, seed=s) for s in (4, 4, 9))
    assert a.indices.tolist() == b.indices.tolist() and a.info["partition_seed"] == 4
    assert [p["rows"] for p in a.info["parts"]] == [60] * 5
    assert c.info["partition_seed"] == 9
    assert [p["objective"] for p in c.info["parts"]] != [p["objective"] for p in a.info["parts"]]


@pytest.mark.parametrize("name", ["fishersft", "sentence_od"])
def test_token_budgets_are_kept(name):
    f = spread_pool(200, 10, seed=2)
    costs, total = f.token_costs, int(f.token_costs.sum())
    sel = get_selector(name, partitions=3)
    for budget in (int(costs.min()), 400, total // 4, total // 2):
        res = sel.select(f, budget, seed=1, unit="tokens")
        used = int(costs[res.indices].sum())
        assert 0 < used <= budget and len(set(res.indices.tolist())) == len(res.indices)
        assert (res.info["unit"], res.info["budget"], res.info["used"]) == ("tokens", budget, used)
        assert budget - used < int(costs.max())  # filled within the union: less than one example is left


def test_the_better_of_union_and_best_part_is_returned():
    f = spread_pool(60, 6)
    sel = get_selector("fishersft")

    def rigged(parts, budget, seed, unit):  # part 1 claims a huge objective: greedi must return that part's set
        out = []
        for j, rows in enumerate(parts):
            idx = rows[:budget]
            out.append(SelectionResult(idx, np.full(len(idx), 100.0 if j == 1 else 0.0), {"part": {"objective": 0}}))
        return out

    res = greedi(sel, f, 5, 3, seed=0, round1=rigged)
    assert res.info["greedi_winner"] == "part" and res.info["best_part"] == 1
    assert res.indices.tolist() == partition(60, 3, 0)[1][:5].tolist()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"partitions": 0}, "partitions must be a whole number >= 1, got 0"),
        ({"partitions": -2}, "partitions must be a whole number >= 1, got -2"),
        ({"partitions": 2.5}, "partitions must be a whole number >= 1, got 2.5"),
        ({"partitions": True}, "partitions must be a whole number >= 1, got True"),
        ({"engine": "spark"}, "engine must be one of local, ray, got 'spark'"),
        ({"ray_address": "127.0.0.1:1"}, "ray_address '127.0.0.1:1' is only used with engine='ray'"),
        ({"epsilon": 0}, "epsilon must be None (exact greedy) or a number in (0, 1), got 0"),
        ({"epsilon": 1.0}, "epsilon must be None (exact greedy) or a number in (0, 1), got 1.0"),
        ({"epsilon": -0.1}, "got -0.1"),
        ({"epsilon": "fast"}, "got 'fast'"),
    ],
)
def test_bad_construction_is_one_selection_error(params, message):
    with pytest.raises(SelectionError) as err:
        get_selector("fishersft", **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_more_parts_than_examples_and_undistributable_selectors():
    f = spread_pool(12, 4)
    with pytest.raises(SelectionError, match=r"partitions 13 is larger than the pool \(12 examples\)"):
        get_selector("fishersft", partitions=13).select(f, 3)
    assert len(get_selector("fishersft", partitions=12).select(f, 3).indices) == 3  # one example per part
    with pytest.raises(SelectionError, match="selector 'random' cannot run distributed"):
        get_selector("random", partitions=2)


# -- the select stage ------------------------------------------------------------------------------------------


def stage_workspace(tmp_path: Path, select: dict, fishersft: dict | None = None) -> Path:
    f = spread_pool(40, 6)
    f.with_values(f.values.astype(np.float16)).save(tmp_path / "data/features/pool")
    pool_rows = [{"id": i, "prompt": f"q{i}", "response": f"a{i}", "source": "t"} for i in f.ids]  # what was embedded
    (tmp_path / "data/download").mkdir(parents=True)
    (tmp_path / "data/download/pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool_rows))
    variants = {"fishersft": {"selector": "fishersft", **(fishersft or {})}, "random": {"selector": "random"}}
    params = {"select": {"seeds": [0, 1], "budget_unit": "examples", "variants": variants, **select}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def run_select(cwd: Path, monkeypatch, capsys, *argv: str) -> str:
    """stages.select in this process (no interpreter start-up): returns its stderr; EXIT_BAD_INPUT on bad input."""
    from stages import select as stage
    from stages._common import run

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["stages.select", *argv])
    try:
        run(stage.main)
    except SystemExit as e:
        assert e.code == EXIT_BAD_INPUT
    return capsys.readouterr().err


def test_stage_writes_how_it_ran_into_the_manifest(tmp_path, monkeypatch, capsys):
    cwd = stage_workspace(tmp_path, {"partitions": 3, "engine": "local"})
    for variant in ("fishersft", "random"):
        assert run_select(cwd, monkeypatch, capsys, variant, "6") == ""
    for seed in (0, 1):
        info = json.loads((cwd / f"results/select/fishersft-6/seed-{seed}/manifest.json").read_text())["info"]
        assert (info["partitions"], info["partition_seed"], info["engine"]) == (3, seed, "local")
        assert info["greedi_winner"] in ("union", "part") and info["deterministic"] is False
        assert "parts" not in info  # per-part lists stay out of the manifest
        info = json.loads((cwd / f"results/select/random-6/seed-{seed}/manifest.json").read_text())["info"]
        assert "partitions" not in info  # random has no greedy to distribute


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("select", "variant", "message"),
    [
        ({"partitions": 0}, {}, "params.yaml select.partitions: must be >= 1, got 0"),
        ({"partitions": 41}, {}, "partitions 41 is larger than the pool (40 examples)"),
        ({"engine": "spark"}, {}, "params.yaml select.engine: must be one of local, ray, got 'spark'"),
        ({}, {"epsilon": 1.5}, "fishersft epsilon must be None (exact greedy) or a number in (0, 1), got 1.5"),
        ({}, {"epsilon": 0}, "fishersft epsilon must be None (exact greedy) or a number in (0, 1), got 0"),
    ],
)
def test_stage_errors_for_partitions_and_epsilon(tmp_path, monkeypatch, capsys, select, variant, message):
    cwd = stage_workspace(tmp_path, select, variant)
    lines = run_select(cwd, monkeypatch, capsys, "fishersft", "6").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (cwd / "results/select/fishersft-6").exists()


def test_stage_unreachable_ray_address_is_one_line_at_once(tmp_path):
    """A real stage process: Ray would retry a dead address for minutes; this ends at once, in one line."""
    port = closed_port()
    cwd = stage_workspace(tmp_path, {"engine": "ray", "partitions": 2, "ray": {"address": f"127.0.0.1:{port}"}})
    proc = run_stage(cwd, "stages.select", "fishersft", "6")
    assert_one_error_line(proc, f"cannot reach Ray at 127.0.0.1:{port}", EXIT_TRANSIENT)  # a rerun may find it up
    assert not (cwd / "results/select/fishersft-6").exists()
