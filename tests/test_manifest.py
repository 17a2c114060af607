"""Selection manifests: the hash covers the selection and its info, not the wall times."""

from __future__ import annotations

import numpy as np
import pytest

from infosift.manifest import build_manifest, verify_manifest


def manifest(**kw) -> dict:
    args = {
        "variant": "fishersft",
        "selector": "fishersft",
        "params": {"ridge": 1.0},
        "budget": 500,
        "seed": 0,
        "ids": ["a", "b", "c"],
        "indices": np.array([2, 0]),
        "gains": np.array([1.5, 0.5]),
        "inputs": {"features": "f" * 64},
        "info": {"unit": "tokens", "used": 480, "celf": "plain-gain", "n_gain_evals": 7},
    }
    return build_manifest(**{**args, **kw})


def test_timings_are_kept_but_not_hashed():
    a = manifest(seconds=1.0, timings={"first_pass_s": 0.25, "total_s": 0.9})
    b = manifest(seconds=7.0, timings={"first_pass_s": 3.0, "total_s": 6.5})
    assert a["hash"] == b["hash"] and a["timings"]["first_pass_s"] == 0.25
    assert a["ids"] == ["c", "a"] and a["info"]["n_gain_evals"] == 7
    verify_manifest(a)


def test_info_is_hashed_and_edits_are_caught():
    a = manifest()
    assert manifest(info={"unit": "examples"})["hash"] != a["hash"]
    a["info"]["used"] = 1
    with pytest.raises(ValueError, match="does not match"):
        verify_manifest(a)
