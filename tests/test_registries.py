"""The named-component registries (selectors, losses, query kinds): known names, clear errors for unknown
ones, and a new registration is found without touching any list."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import infosift.losses as losses
import infosift.queries as queries
import infosift.select as select
from infosift.errors import InfosiftError, SelectionError
from infosift.features import TokenFeatures
from infosift.manifest import path_sha256
from stages._common import EXIT_BAD_INPUT

ROOT = Path(__file__).resolve().parent.parent

# --- selectors ---------------------------------------------------------------------------------------------


def registered_names(path: Path) -> set[str]:
    """Names a module registers with ``@register("name")`` on a class."""
    return {
        d.args[0].value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        for d in node.decorator_list
        if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register" and d.args
    }


def test_every_registered_selector_module_is_discovered():
    package = ROOT / "infosift" / "select"
    names = set().union(*(registered_names(f) for f in package.glob("*.py")))
    assert {"density", "dsir", "fishersft", "gip", "random", "sentence_od"} <= names
    assert {"length", "length_matched", "typicality"} <= names
    assert names == set(select.available())


def test_unknown_selector_lists_the_known_ones():
    with pytest.raises(SelectionError, match=r"unknown selector 'nope'; available: density, dsir, .*sentence_od"):
        select.get_selector("nope")


def test_a_new_selector_module_is_found_without_an_import_list(tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "first_k.py").write_text(
        "from infosift.select import register\n\n\n"
        '@register("first_k")\n'
        "class FirstK:\n"
        "    def select(self, features, budget, seed=0, **kw):\n"
        "        return list(range(budget))\n"
    )
    monkeypatch.setattr(select, "__path__", [*select.__path__, str(extra)])
    monkeypatch.setattr(select, "_REGISTRY", dict(select._REGISTRY))
    try:
        assert "first_k" in select.discover()
        assert "first_k" in select.available()
        assert select.get_selector("first_k").select(None, 3) == [0, 1, 2]
    finally:
        sys.modules.pop("infosift.select.first_k", None)
    with pytest.raises(ValueError, match="registered twice"):
        select.register("random")(type("Again", (), {}))


# --- losses --------------------------------------------------------------------------------------------------


def test_known_losses_and_unknown_loss_error():
    assert losses.available_losses() == ["dft", "infosift", "nll"]
    with pytest.raises(InfosiftError, match="unknown loss_type 'focal'; expected one of dft, infosift, nll"):
        losses.get_loss("focal")
    q = torch.tensor([0.25, 0.5])
    assert torch.equal(losses.get_loss("dft")(q, 0.93), q)


def test_a_new_loss_is_found_and_used_by_weighted_token_loss(monkeypatch):
    monkeypatch.setattr(losses, "_LOSSES", dict(losses._LOSSES))

    @losses.register_loss("half")
    def half(q: torch.Tensor, P: float) -> torch.Tensor:
        return torch.full_like(q, 0.5)

    assert "half" in losses.available_losses()
    torch.manual_seed(0)
    logits, labels, mask = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3)), torch.ones(2, 3)
    nll = losses.weighted_token_loss(logits, labels, mask, loss_type="nll")
    assert losses.weighted_token_loss(logits, labels, mask, loss_type="half").item() == pytest.approx(nll.item() / 2)
    with pytest.raises(ValueError, match="registered twice"):
        losses.register_loss("nll")(half)


# --- query kinds ---------------------------------------------------------------------------------------------


def source(tmp_path: Path, ids: list[str], **options) -> queries.QuerySource:
    return queries.QuerySource(ids=ids, features=tmp_path / "features", download=tmp_path / "download", options=options)


def test_known_query_kinds_and_unknown_kind_error():
    assert queries.available_queries() == ["dsir", "ma", "scores", "targets"]
    assert queries.query_options() == ["attribute_weights", "scores_file"]
    with pytest.raises(SelectionError, match=r"unknown query kind 'bogus' \(use dsir, ma, scores or targets\)"):
        queries.get_query("bogus")


def test_a_new_query_kind_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(queries, "_QUERIES", dict(queries._QUERIES))
    monkeypatch.setattr(queries, "_OPTIONS", dict(queries._OPTIONS))

    @queries.register_query("ones", options=("scale",))
    def ones(src: queries.QuerySource) -> queries.QueryInputs:
        return {"scores": np.full(len(src.ids), float(src.options["scale"]))}, {}

    assert "ones" in queries.available_queries() and "scale" in queries.query_options()
    kwargs, hashes = queries.get_query("ones")(source(tmp_path, ["a", "b"], scale=2))
    np.testing.assert_array_equal(kwargs["scores"], [2.0, 2.0])
    with pytest.raises(ValueError, match="registered twice"):
        queries.register_query("ma")(ones)


def test_file_query_kinds_read_plain_paths_and_hash_them(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "features" / "pool").mkdir(parents=True)
    np.save(tmp_path / "features" / "pool" / "self_scores.npy", np.arange(3.0))
    TokenFeatures.from_list([rng.normal(size=(2, 4)).astype(np.float32) for _ in range(2)]).save(
        tmp_path / "features" / "target"
    )
    src = source(tmp_path, ["a", "b", "c"])

    kwargs, hashes = queries.get_query("scores")(src)
    np.testing.assert_array_equal(kwargs["scores"], [0.0, 1.0, 2.0])
    assert hashes == {"scores": path_sha256(tmp_path / "features" / "pool" / "self_scores.npy")}

    kwargs, hashes = queries.get_query("targets")(src)
    assert len(kwargs["targets"]) == 2 and hashes == {"targets": path_sha256(tmp_path / "features" / "target")}

    with pytest.raises(SelectionError, match="query 'ma' needs scores_file"):
        queries.get_query("ma")(src)
    ma = tmp_path / "ma.json"
    ma.write_text(json.dumps({i: {"help": n} for n, i in enumerate("cab")}))
    kwargs, hashes = queries.get_query("ma")(
        source(tmp_path, ["a", "b", "c"], scores_file=str(ma), attribute_weights={"help": 2})
    )
    np.testing.assert_array_equal(kwargs["scores"], [2.0, 4.0, 0.0])
    assert hashes == {"scores": path_sha256(ma)}

    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "target.jsonl").write_text("")
    with pytest.raises(SelectionError, match="query 'dsir' needs a target slice"):
        queries.get_query("dsir")(src)


def test_select_stage_names_an_unknown_query_kind_before_reading_features(tmp_path):
    variants = {"odd": {"selector": "gip", "query": "bogus"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"select": {"seeds": [0], "variants": variants}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.select", "odd", "2"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.strip() == "error: unknown query kind 'bogus' (use dsir, ma, scores or targets)"
