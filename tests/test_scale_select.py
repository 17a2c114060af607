"""GreeDi's round 1 on Ray (infosift/scale/select.py): the same selection as the local engine, each task reading
only its rows of the memory-mapped features; bad input in one line."""

from __future__ import annotations

import numpy as np
import pytest

from infosift.features import TokenFeatures
from infosift.select import SelectionError, get_selector
from infosift.select.greedi import partition
from tests.test_greedi import closed_port, spread_pool
from tests.test_stage_errors import ROOT


def saved(tmp_path, f: TokenFeatures) -> TokenFeatures:
    f.with_values(f.values.astype(np.float16)).save(tmp_path / "pool")
    return TokenFeatures.load(tmp_path / "pool", mmap=True)


def test_ray_engine_needs_memory_mapped_features_and_a_reachable_address(tmp_path):
    """Hermetic: both are checked before Ray is imported or started."""
    from infosift.errors import ClusterError
    from infosift.scale.select import features_dir

    with pytest.raises(ClusterError, match=f"cannot reach Ray at 127.0.0.1:{(port := closed_port())}"):
        get_selector("fishersft", partitions=2, engine="ray", ray_address=f"127.0.0.1:{port}")
    f = saved(tmp_path, spread_pool(20, 4))
    assert features_dir(f) == tmp_path / "pool"
    with pytest.raises(SelectionError, match="load the features with TokenFeatures.load"):
        features_dir(f.subset(np.arange(20)))  # in memory: no directory to hand to the tasks


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    env = {"PYTHONPATH": str(ROOT)}  # workers import this checkout's infosift
    for attempt in range(2):  # a loaded machine can make the raylet give up on a slow agent (ray issue #65983)
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env})
            break
        except Exception as e:  # Ray raises a bare Exception for it
            ray.shutdown()
            if attempt or "timed out during startup" not in str(e):
                raise
    yield ray
    ray.shutdown()


@pytest.mark.server
def test_ray_equals_local_and_tasks_read_only_their_rows(local_ray, tmp_path):
    f = saved(tmp_path, spread_pool(150, 8))
    for name, unit, budget, k in (("fishersft", "examples", 12, 3), ("sentence_od", "tokens", 400, 2)):
        local = get_selector(name, partitions=k).select(f, budget, seed=2, unit=unit)
        remote = get_selector(name, partitions=k, engine="ray").select(f, budget, seed=2, unit=unit)
        assert remote.indices.tolist() == local.indices.tolist()
        np.testing.assert_array_equal(remote.gains, local.gains)
        assert (remote.info["engine"], remote.info["partitions"], remote.info["partition_seed"]) == ("ray", k, 2)
        # what each task received and read: its part's rows, and only those sentences' token rows
        for got, rows in zip(remote.info["parts"], partition(len(f), k, 2), strict=True):
            assert got["rows"] == len(rows)
            assert got["token_rows"] == int(f.lengths[rows].sum()) < len(f.values)
    bad = spread_pool(40, 4)
    bad.values[bad.offsets[7]] = np.nan
    with pytest.raises(SelectionError, match=r"sentence \d+ .*contain NaN or Inf"):  # a task's error, in one line
        get_selector("fishersft", partitions=2, engine="ray").select(saved(tmp_path / "bad", bad), 5)
