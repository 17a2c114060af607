"""Each selector against its length-matched control: which variant controls which, and the paired table."""

from __future__ import annotations

import numpy as np
import pytest

from infosift.evidence import ModelResult, control_lines, control_table, evidence_table, length_controls

VARIANTS = {
    "random": {"selector": "random"},
    "fishersft-len": {"selector": "fishersft", "ridge": 1.0, "weighting": "length"},
    "fishersft-len-lm": {
        "selector": "length_matched",
        "of": {"selector": "fishersft", "ridge": 1.0, "weighting": "length"},
    },
    "gip-target": {"selector": "gip", "ridge": 1.0, "query": "targets"},
    "gip-target-lm": {"selector": "length_matched", "query": "targets", "of": {"selector": "gip", "ridge": 1.0}},
    "fishersft-pmi": {"selector": "fishersft", "filter": {"score": "pmi", "drop": 0.2}},
    "fishersft-pmi-lm": {
        "selector": "length_matched",
        "bins": 5,
        "filter": {"score": "pmi", "drop": 0.2},
        "of": {"selector": "fishersft"},
    },
    "length": {},
    "length-lm": {"selector": "length_matched", "of": {"selector": "length"}},
    "fishersft-lm": {"selector": "length_matched", "of": {"selector": "fishersft", "ridge": 2.0}},
}


def test_length_controls_match_configurations():
    run = list(VARIANTS)
    assert length_controls(VARIANTS, run) == {
        "fishersft-len": "fishersft-len-lm",
        "gip-target": "gip-target-lm",
        "fishersft-pmi": "fishersft-pmi-lm",
        "length": "length-lm",  # a variant named after its selector needs no 'selector' key
    }  # fishersft-lm matches no variant (ridge 2.0): it controls nothing
    assert length_controls(VARIANTS, ["random", "fishersft-len", "gip-target-lm"]) == {}  # only within the run
    assert length_controls(VARIANTS, ["fishersft-len", "fishersft-len-lm"]) == {"fishersft-len": "fishersft-len-lm"}


def results(shift_vs_control: float, e: int = 200, seeds=(0, 1, 2)) -> list[ModelResult]:
    """random, a selector 'sel' and its control 'sel-lm' at two budgets; sel = control + shift per token."""
    rng = np.random.default_rng(1)
    den = rng.integers(5, 40, size=e).astype(float)
    hard = rng.normal(0, 0.3, size=e)
    out = []
    for budget in (100, 200):
        for s in seeds:
            base = den * (1.5 - 0.1 * np.log2(budget / 100) + hard + rng.normal(0, 0.01, size=e))
            ctrl = base - den * 0.03  # the control beats random: length alone helps
            sel = ctrl + den * (shift_vs_control + rng.normal(0, 0.01, size=e))
            perm = rng.permutation(e) if shift_vs_control == 0 else np.arange(e)
            if shift_vs_control == 0:  # the control's (num, den) pairs in another order: the same metric
                sel = ctrl
            out += [
                ModelResult("random", budget, s, budget, base, den),
                ModelResult("sel-lm", budget, s, budget, ctrl, den),
                ModelResult("sel", budget, s, budget, sel[perm], den[perm]),
            ]
    return out


@pytest.mark.parametrize("shift,word", [(-0.05, "beats"), (0.05, "worse than"), (0.0, "no difference")])
def test_control_table_reads_each_selector_against_its_control(shift, word):
    res = results(shift)
    df = control_table(res, {"sel": "sel-lm"}, n_boot=300)
    assert list(df["selector"]) == ["sel", "sel"] and set(df["reference"]) == {"sel-lm"}
    assert all(v.startswith(word) for v in df["verdict"])
    alone = evidence_table([r for r in res if r.selector != "random"], reference="sel-lm", n_boot=300)
    alone = alone[alone["selector"] == "sel"].reset_index(drop=True)
    np.testing.assert_allclose(df["diff"].to_numpy(float), alone["diff"].to_numpy(float))
    np.testing.assert_allclose(df["lo"].to_numpy(float), alone["lo"].to_numpy(float))
    assert all("sel-lm" in line for line in control_lines(df))
    vs_random = evidence_table(res, n_boot=300).set_index(["selector", "budget"])
    assert vs_random.loc[("sel-lm", 100), "verdict"].startswith("beats random")  # length alone, seen as such
    assert not np.allclose(df["diff"].to_numpy(float), vs_random.loc["sel", "diff"].to_numpy(float))


def test_control_table_leaves_out_what_has_no_results():
    res = results(-0.05)
    assert control_table(res, {}).empty
    assert control_table(res, {"other": "other-lm"}).empty
    assert control_table([r for r in res if r.selector != "sel-lm"], {"sel": "sel-lm"}).empty
    assert "reference" in control_table(res, {}).columns


def test_compare_reports_each_selector_against_its_control(tmp_path):
    """compare's evidence report (write_evidence): the control rows go to evidence.csv (``reference``) and
    evidence.md."""
    import itertools
    import json

    import pandas as pd

    from infosift.evidence_report import write_evidence

    variants = {"random": {}, "length": {}, "length-lm": {"selector": "length_matched", "of": {"selector": "length"}}}
    rows, rng = [], np.random.default_rng(3)
    for (variant, shift), seed in itertools.product([("random", 0.0), ("length", -0.2), ("length-lm", -0.1)], [0, 1]):
        name = f"{variant}-100-s{seed}-nll"
        out = tmp_path / "results/evaluate" / name
        out.mkdir(parents=True)
        per = [{"id": f"t{e}", "nll_sum": 20.0 + 5 * shift + rng.normal(0, 0.01), "n_tokens": 10} for e in range(30)]
        (out / "per_example.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per))
        rows.append(
            {"variant": name, "selector": variant, "budget": 100, "seed": seed, "loss": "nll", "train_tokens": 100}
        )
    (tmp_path / "out").mkdir()
    write_evidence(
        tmp_path / "out", rows, run=list(variants), variants=variants, seeds=[0, 1], losses=["nll"], n_boot=200,
        unit="tokens", root=tmp_path,
    )  # fmt: skip
    csv = pd.read_csv(tmp_path / "out/evidence.csv")
    vs = csv.set_index(["selector", "reference"])
    assert vs.loc[("length", "length-lm"), "verdict"].startswith("beats length-lm")
    assert vs.loc[("length", "random"), "verdict"].startswith("beats random")
    assert vs.loc[("length-lm", "random"), "verdict"].startswith("beats random")  # length alone helps here
    md = (tmp_path / "out/evidence.md").read_text()
    assert "Against its length-matched control" in md and "length @ 100 tokens: beats length-lm" in md
