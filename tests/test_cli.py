"""The `infosift` command: select from a file of one's own, export a manifest's rows, run the flows, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infosift.cli import EXIT_BAD_INPUT, EXIT_USAGE, main
from infosift.data import dataset_spec, normalize_row
from infosift.manifest import read_manifest
from tests.tiny import gsm_rows, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def own_rows(n: int = 24) -> list[dict]:
    """Rows in a layout of their own: instruction/output plus fields infosift never reads, one row repeated."""
    rows = [
        {"uid": f"u{i}", "instruction": r["question"], "output": r["answer"], "tags": ["math", str(i % 3)],
         "difficulty": 0.25 * i}
        for i, r in enumerate(gsm_rows(n, seed=3))
    ]  # fmt: skip
    return rows + [dict(rows[2], uid="repeat")]


def ids_of(rows: list[dict]) -> dict[str, dict]:
    """record id -> the first raw row with it, computed here from the library's normalization."""
    out: dict[str, dict] = {}
    for i, row in enumerate(rows, start=1):
        out.setdefault(normalize_row(row, dataset_spec("own"), Path("own.jsonl"), i)["id"], row)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "own.jsonl", own_rows())


def select(data: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["select", str(data), "--model", str(model), "--cache-dir", str(out.parent / "cache"),
                 "--out", str(out), "--max-length", "64", *extra])  # fmt: skip


def test_help_lists_the_verbs_and_every_verb_has_help(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for verb in ("select", "export", "run", "evidence"):
        assert verb in top
        assert main([verb, "--help"]) == 0
        assert f"usage: infosift {verb}" in capsys.readouterr().out


def test_select_writes_the_source_rows_in_selection_order(data, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "picked" / "subset.jsonl"
    assert select(data, out, tiny_model_dir, "--selector", "fishersft", "--budget", "6", "--params", "ridge=0.5") == 0
    manifest = read_manifest(out.with_name("subset.manifest.json"))  # checked: untouched, ids a list
    by_id = ids_of(own_rows())
    assert len(manifest["ids"]) == 6 == len(set(manifest["ids"]))
    assert read_jsonl(out) == [by_id[i] for i in manifest["ids"]]  # same fields, same values, chosen order
    assert manifest["selector"] == "fishersft" and manifest["params"]["ridge"] == 0.5
    assert manifest["gains"] is not None and len(manifest["gains"]) == 6
    assert "embedded" in capsys.readouterr().out


def test_second_select_reuses_the_cached_features(data, tmp_path, tiny_model_dir, capsys):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert select(data, first, tiny_model_dir, "--selector", "random", "--budget", "5", "--seed", "1") == 0
    assert "embedded" in capsys.readouterr().out
    assert select(data, second, tiny_model_dir, "--selector", "random", "--budget", "5", "--seed", "2") == 0
    assert "from the cache" in capsys.readouterr().out
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1
    m1, m2 = (read_manifest(p.with_name(p.stem + ".manifest.json")) for p in (first, second))
    assert m1["inputs"]["features"] == m2["inputs"]["features"] and m1["ids"] != m2["ids"]


def test_token_budget_parquet_out_and_export_round_trip(data, tmp_path, tiny_model_dir):
    import pyarrow.parquet as pq

    out = tmp_path / "chosen.parquet"
    assert select(data, out, tiny_model_dir, "--selector", "random", "--budget", "300", "--unit", "tokens") == 0
    manifest = read_manifest(tmp_path / "chosen.manifest.json")
    by_id = ids_of(own_rows())
    chosen = [by_id[i] for i in manifest["ids"]]
    assert pq.read_table(out).to_pylist() == chosen
    assert 0 < manifest["info"]["train_tokens"] <= 300
    # export: to JSONL beside the manifest by default, from the file the manifest records
    assert main(["export", str(tmp_path / "chosen.manifest.json"), "--format", "jsonl"]) == 0
    assert read_jsonl(tmp_path / "chosen.jsonl") == chosen


def test_select_reads_a_save_to_disk_folder(tmp_path, tiny_model_dir):
    import datasets

    rows = own_rows()[:12]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "s.jsonl"
    assert select(tmp_path / "ds", out, tiny_model_dir, "--selector", "random", "--budget", "4") == 0
    manifest = read_manifest(tmp_path / "s.manifest.json")
    assert read_jsonl(out) == [ids_of(rows)[i] for i in manifest["ids"]]


def test_export_of_a_pipeline_manifest_takes_its_ids_from_the_data(tmp_path):
    """A manifest as the select stage writes it (ids only), exported against the raw file the pool came from."""
    from infosift.manifest import build_manifest

    rows = own_rows()
    ids = list(ids_of(rows))
    import numpy as np

    manifest = build_manifest(variant="v", selector="random", params={}, budget=3, seed=0, ids=ids,
                              indices=np.array([5, 0, 9]), gains=None, inputs={})  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    data = write_jsonl(tmp_path / "raw.jsonl", rows)
    assert main(["export", str(tmp_path / "manifest.json"), "--format", "parquet", "--data", str(data)]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "subset.parquet").to_pylist() == [ids_of(rows)[ids[i]] for i in (5, 0, 9)]


def bad_cases(data: Path, tmp: Path, model: Path) -> dict[str, list[str]]:
    common = ["--model", str(model), "--cache-dir", str(tmp / "m" / "cache"), "--max-length", "64"]
    other = tmp / "other.jsonl"  # data with none of the manifest's ids (written by bad_setup)
    manifest = tmp / "m" / "x.manifest.json"
    return {
        "missing file": ["select", str(tmp / "nope.jsonl"), "--selector", "random", "--budget", "2",
                         "--out", str(tmp / "out" / "s.jsonl"), *common],
        "unknown selector": ["select", str(data), "--selector", "nosuch", "--budget", "2",
                             "--out", str(tmp / "out" / "s.jsonl"), *common],
        "budget above the pool": ["select", str(data), "--selector", "random", "--budget", "1000",
                                  "--out", str(tmp / "out" / "s.jsonl"), *common],
        "token budget fits nothing": ["select", str(data), "--selector", "fishersft", "--budget", "1",
                                      "--unit", "tokens", "--out", str(tmp / "out" / "s.jsonl"), *common],
        "bad param": ["select", str(data), "--selector", "fishersft", "--budget", "2", "--params", "ridge=-1",
                      "--out", str(tmp / "out" / "s.jsonl"), *common],
        "unknown out suffix": ["select", str(data), "--selector", "random", "--budget", "2",
                               "--out", str(tmp / "out" / "s.csv"), *common],
        "ids not in data": ["export", str(manifest), "--format", "jsonl", "--data", str(other),
                            "--out", str(tmp / "out" / "e.jsonl")],
        "unknown format": ["export", str(manifest), "--format", "csv", "--out", str(tmp / "out" / "e.csv")],
        "missing manifest": ["export", str(tmp / "none.json"), "--format", "jsonl",
                             "--out", str(tmp / "out" / "e.jsonl")],
    }  # fmt: skip


@pytest.fixture(scope="module")
def bad_setup(tmp_path_factory, tiny_model_dir):
    """A data file and a real manifest of it (for the export cases)."""
    tmp = tmp_path_factory.mktemp("bad")
    data = write_jsonl(tmp / "own.jsonl", own_rows())
    assert select(data, tmp / "m" / "x.jsonl", tiny_model_dir, "--selector", "random", "--budget", "3") == 0
    write_jsonl(tmp / "other.jsonl", [{"prompt": "what is 3 plus 4 ?", "response": "7"}])
    return tmp, data


@pytest.mark.parametrize("case", list(bad_cases(Path("d"), Path("t"), Path("m"))))
def test_bad_input_is_one_error_line_and_writes_nothing(case, bad_setup, tiny_model_dir, capsys):
    tmp, data = bad_setup
    capsys.readouterr()
    assert main(bad_cases(data, tmp, tiny_model_dir)[case]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()  # progress bars may come first, on stderr
    assert [line for line in err if "error" in line] == err[-1:] and err[-1].startswith("error: "), err
    assert not (tmp / "out").exists() or not any((tmp / "out").iterdir())


@pytest.mark.parametrize(
    "argv",
    [[], ["nosuchverb"], ["select", "d.jsonl", "--selector", "random"], ["select", "d.jsonl", "--selector", "random",
     "--budget", "2.5", "--out", "o.jsonl"], ["export", "m.json", "--format", "jsonl", "--bogus"]],
)  # fmt: skip
def test_a_bad_command_line_is_one_usage_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: infosift"), err
    assert list(tmp_path.iterdir()) == []


def test_run_outside_a_checkout_is_one_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: not an infosift checkout")


@pytest.mark.parametrize("verb, module", [("run", "pipeline"), ("evidence", "evidence")])
def test_flow_verbs_run_the_checkouts_flow_with_its_options(verb, module, tmp_path, monkeypatch):
    """In a checkout, the verb is `python -m flows.<module>` there, every other option passed on; its exit code."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text("")
    (tmp_path / "flows" / f"{module}.py").write_text(
        "import json, sys\nopen('argv.json', 'w').write(json.dumps(sys.argv[1:]))\nsys.exit(3)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main([verb, "--stages", "download", "embed", "--force"]) == 3
    assert json.loads((tmp_path / "argv.json").read_text()) == ["--stages", "download", "embed", "--force"]


def test_console_script_and_module_entry(tmp_path):
    """pyproject names infosift.cli:main as the `infosift` script; `python -m infosift.cli` runs from any folder."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"infosift": "infosift.cli:main"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "infosift.cli", "export", "x.json", "--format", "jsonl"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == EXIT_BAD_INPUT and proc.stderr.strip().startswith("error: x.json: not found")
    proc = subprocess.run([sys.executable, "-m", "infosift.cli", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0 and "select" in proc.stdout
