"""Contamination: exact counts, a true derangement, strictly shorter truncations, seeded, ids only where altered."""

from __future__ import annotations

import json

import pytest
import yaml

from infosift.contaminate import contaminate, truncate_text
from infosift.data import read_records, record_id
from tests.test_stage_errors import assert_one_error_line, run_stage, setup_download


def make_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        prompt = f"Question {i}: what is {i} plus {i + 1}?"
        response = f"Add {i} and {i + 1} to get {2 * i + 1}, so the answer is #### {2 * i + 1}"
        out.append({"id": record_id(prompt, response), "prompt": prompt, "response": response, "source": "toy"})
    return out


@pytest.mark.parametrize(("n", "share", "expected"), [(40, 0.25, 10), (41, 0.1, 4), (7, 0.5, 4), (40, 0.3, 12)])
def test_exact_count_split_over_modes(n, share, expected):
    recs = make_records(n)
    out, report = contaminate(recs, share, seed=0)
    assert report["n"] == expected == len(report["ids"])
    changed = [i for i, (a, b) in enumerate(zip(recs, out, strict=True)) if a != b]
    assert len(changed) == expected
    modes = list(report["ids"].values())
    assert abs(modes.count("swap") - modes.count("truncate")) <= 1
    assert report["share"] == share and report["seed"] == 0 and report["modes"] == ["swap", "truncate"]


def test_swap_is_a_derangement_and_truncation_strictly_shorter():
    recs = make_records(50)
    out, report = contaminate(recs, 0.4, seed=3)
    by_id = {r["id"]: i for i, r in enumerate(out)}
    swapped = [by_id[k] for k, m in report["ids"].items() if m == "swap"]
    truncated = [by_id[k] for k, m in report["ids"].items() if m == "truncate"]
    assert len(swapped) == len(truncated) == 10
    donors = {r["response"]: i for i, r in enumerate(recs)}
    for i in swapped:
        j = donors[out[i]["response"]]
        assert j != i and j in swapped  # someone else's response, from the contaminated set
    assert sorted(donors[out[i]["response"]] for i in swapped) == sorted(swapped)  # a permutation of the set
    for i in truncated:
        assert len(out[i]["response"]) < len(recs[i]["response"])
        assert recs[i]["response"].startswith(out[i]["response"]) and out[i]["response"].strip()


def test_truncate_text():
    assert truncate_text("one two three four five six seven") == "one two"
    assert truncate_text("one two") == "one"
    assert truncate_text("abcdef") == "ab"
    assert truncate_text("ab") == "a"


def test_seeded_and_seed_dependent():
    recs = make_records(60)
    a, ra = contaminate(recs, 0.3, seed=7)
    b, rb = contaminate(recs, 0.3, seed=7)
    c, _ = contaminate(recs, 0.3, seed=8)
    assert a == b and ra == rb
    assert a != c


def test_share_zero_is_identity_and_bad_values_raise():
    recs = make_records(10)
    out, report = contaminate(recs, 0.0, seed=0)
    assert out == recs and report["n"] == 0 and report["ids"] == {}
    for share in (-0.1, 1.0, 1.5, True, "0.2", float("nan")):
        with pytest.raises(ValueError, match="share"):
            contaminate(recs, share, seed=0)
    with pytest.raises(ValueError, match="unknown contamination mode"):
        contaminate(recs, 0.2, seed=0, modes=("swap", "shuffle"))
    with pytest.raises(ValueError, match="at least 2"):
        contaminate(recs, 0.1, seed=0, modes=("swap",))


def test_ids_change_only_for_altered_records_and_stay_content_derived():
    recs = make_records(30)
    out, report = contaminate(recs, 0.5, seed=1)
    assert [r["prompt"] for r in out] == [r["prompt"] for r in recs]  # order and prompts kept
    for old, new in zip(recs, out, strict=True):
        assert new["source"] == old["source"]
        if new["id"] in report["ids"]:
            assert new["id"] != old["id"] and new["response"] != old["response"]
            assert new["id"] == record_id(new["prompt"], new["response"])
        else:
            assert new == old
    assert len({r["id"] for r in out}) == len(out)


def test_swaps_between_records_of_one_prompt_are_redrawn():
    # pairs share a prompt: a swap inside a pair would give back a good example and reuse an id
    recs = []
    for i in range(10):
        for k in range(2):
            prompt, response = f"Q{i}", f"answer {i} way {k} with some more words"
            recs.append({"id": record_id(prompt, response), "prompt": prompt, "response": response, "source": "t"})
    out, report = contaminate(recs, 0.2, seed=0, modes=("swap",))
    assert report["n"] == 4
    assert len({r["id"] for r in out}) == len(out)
    for r in out:
        if r["id"] in report["ids"]:
            assert not r["response"].startswith(f"answer {r['prompt'][1:]} ")


# -- the download stage ----------------------------------------------------------------------
def rows(n: int) -> bytes:
    return "".join(
        json.dumps({"question": f"q{i} how many?", "answer": f"step one, step two, step three #### {i}"}) + "\n"
        for i in range(n)
    ).encode()


def with_option(cwd, option) -> None:
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["download"]["target_size"] = 4
    if option is not None:
        params["download"]["contaminate"] = option
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


def test_download_contaminates_the_pool_only(tmp_path):
    cwd = setup_download(tmp_path, rows(24))
    with_option(cwd, {"share": 0.25, "seed": 5, "modes": ["swap", "truncate"]})
    proc = run_stage(cwd, "stages.download")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((cwd / "data/download/manifest.json").read_text())
    report = manifest["contamination"]
    assert report["n"] == 5 and report["seed"] == 5 and len(report["ids"]) == 5
    pool = read_records(cwd / "data/download/pool.jsonl")
    target = read_records(cwd / "data/download/target.jsonl")
    assert len(pool) == 20 and sum(r["id"] in report["ids"] for r in pool) == 5
    assert not {r["id"] for r in target} & set(report["ids"])
    assert all(r["id"] == record_id(r["prompt"], r["response"]) for r in pool + target)


@pytest.mark.parametrize("option", [None, {"share": 0.0, "seed": 0, "modes": ["swap", "truncate"]}])
def test_download_off_records_share_zero(tmp_path, option):
    cwd = setup_download(tmp_path, rows(12))
    with_option(cwd, option)
    proc = run_stage(cwd, "stages.download")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((cwd / "data/download/manifest.json").read_text())["contamination"] == {"share": 0}


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"share": 1.5, "seed": 0}, "download.contaminate: contamination share must be a number in [0, 1)"),
        ({"share": 0.2, "modes": ["swap", "shuffle"]}, "unknown contamination mode 'shuffle'"),
        ({"share": 0.2, "speed": 1}, "unknown key 'speed'"),
    ],
)
def test_download_bad_contamination_is_one_error_line(tmp_path, option, message):
    cwd = setup_download(tmp_path, rows(12))
    with_option(cwd, option)
    assert_one_error_line(run_stage(cwd, "stages.download"), message)
    assert not (cwd / "data" / "download").exists()
