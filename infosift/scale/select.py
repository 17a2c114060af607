"""GreeDi's first round on Ray: one task per part, each reading only its rows of the memory-mapped features.

``get_selector(name, partitions=k, engine="ray", ray_address=...)`` lands here (select/greedi.py holds the
algorithm; this module only says where round 1 runs). A task receives the features *directory* and its part's
row indices, never the arrays: it maps the directory (TokenFeatures.load(mmap=True)) and materializes only its
sentences' token rows, so a pool larger than one machine's memory is split across workers. Every worker must
see the directory at the same path (one machine, or a shared filesystem). The selector object travels to the
workers as it is; it knows nothing of Ray (workers import infosift: install it there). Round 2 (the greedy
over the union, at most k * budget examples) runs in the caller.

Addresses as in scale/cluster.py (None: a local Ray on this machine); an address with nothing listening fails
when the selector is made, in one line, before any work.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from infosift.errors import InfosiftError
from infosift.features import OFFSETS, VALUES, TokenFeatures
from infosift.scale.cluster import check_address, connect
from infosift.select.base import SelectionError, SelectionResult, Selector
from infosift.select.greedi import Round1, select_rows

__all__ = ["features_dir", "ray_round1", "select_part"]


def features_dir(features: TokenFeatures) -> Path:
    """The directory ``features`` were memory-mapped from; the Ray engine passes it, not the arrays."""
    values = features.values
    if not isinstance(values, np.memmap) or not values.filename:
        raise SelectionError(
            "engine='ray' reads each part's rows from disk: load the features with TokenFeatures.load(path, mmap=True)"
        )
    src = Path(values.filename).parent
    on_disk = np.load(src / OFFSETS, mmap_mode="r")
    if Path(values.filename).name != VALUES or not np.array_equal(on_disk, features.offsets):
        raise SelectionError(f"{src}: these features are not that directory's (offsets differ); reload them")
    return src


def select_part(source: str, rows: np.ndarray, selector: Selector, budget: int, seed: int, unit: str):
    """One Ray task: map ``source``, read only ``rows``' token rows, run the selector on them."""
    t0 = time.perf_counter()
    part = TokenFeatures.load(source, mmap=True).subset(rows)
    read_s = time.perf_counter() - t0
    res = select_rows(selector, part, rows, budget, seed, unit)
    res.info["part"]["read_s"] = read_s
    return res


def ray_round1(address: str | None = None) -> Callable[[Selector, TokenFeatures], Round1]:
    """What select/greedi.py's Distributed calls to run round 1 on Ray (Ray and the address are checked now)."""
    check_address(address)
    if importlib.util.find_spec("ray") is None:
        raise SelectionError('engine="ray" needs Ray: pip install -e ".[ray]"')

    def make(selector: Selector, features: TokenFeatures) -> Round1:
        source = str(features_dir(features))

        def run(parts: list[np.ndarray], budget: int, seed: int, unit: str) -> list[SelectionResult]:
            import ray

            connect(address)
            task = ray.remote(select_part)
            sel = ray.put(selector)
            refs = [task.remote(source, rows, sel, budget, seed, unit) for rows in parts]
            pending = list(refs)
            with tqdm(total=len(refs), desc="greedi round 1 (ray)", unit="part", disable=None) as bar:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    bar.update(len(done))
            try:
                return ray.get(refs)
            except ray.exceptions.RayTaskError as e:  # bad input inside a task: its one line, not a remote trace
                if isinstance(e.cause, InfosiftError):
                    raise type(e.cause)(str(e.cause)) from None
                raise

        return run

    return make
