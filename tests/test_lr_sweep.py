"""The learning-rate sweep: the lowest mean validation NLL wins, trials resume from their cache, and the stage
never opens the test split (an audit hook sees every file the process opens)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from infosift.errors import InfosiftError
from infosift.lr_sweep import Trial, choose, run_sweep, summarize
from tests.tiny import gsm_rows, write_jsonl


def test_choose_takes_the_lowest_mean_over_seeds_and_the_smaller_rate_on_a_tie():
    trials = [Trial(1e-4, 0, 2.0, 8), Trial(1e-4, 1, 1.0, 8), Trial(1e-3, 0, 1.4, 8), Trial(1e-3, 1, 1.4, 8),
              Trial(1e-2, 0, 1.2, 8), Trial(1e-2, 1, 2.0, 8)]  # fmt: skip
    rows = summarize(trials)
    assert [r["learning_rate"] for r in rows] == [1e-4, 1e-3, 1e-2]
    assert [r["validation_nll"] for r in rows] == pytest.approx([1.5, 1.4, 1.6])  # mean, not the best seed
    assert rows[0]["min"] == 1.0 and rows[0]["max"] == 2.0 and rows[0]["n_seeds"] == 2
    assert choose(rows) == 1e-3
    assert choose(summarize([Trial(3e-4, 0, 1.0, 8), Trial(1e-4, 0, 1.0, 8)])) == 1e-4


def test_a_diverged_rate_never_wins_and_all_diverged_is_an_error():
    assert choose(summarize([Trial(1e-3, 0, float("nan"), 8), Trial(1e-5, 0, 3.0, 8)])) == 1e-5
    assert choose(summarize([Trial(1e-3, 0, float("inf"), 8), Trial(1e-5, 0, 3.0, 8)])) == 1e-5
    with pytest.raises(InfosiftError, match="every learning rate of the sweep diverged"):
        choose(summarize([Trial(1e-3, 0, float("nan"), 8)]))


def test_finished_trials_are_read_back_not_rerun(tmp_path):
    calls = []

    def trial(lr: float, seed: int) -> Trial:
        calls.append((lr, seed))
        return Trial(lr, seed, lr * 100 + seed, 4)

    def key(lr: float, seed: int) -> str:
        return f"{lr}-{seed}"

    first = run_sweep([1e-3, 1e-4], [0, 1], trial, tmp_path, key)
    assert calls == [(1e-3, 0), (1e-3, 1), (1e-4, 0), (1e-4, 1)]
    (tmp_path / f"{key(1e-4, 1)}.json").unlink()  # killed before the last trial finished
    calls.clear()
    assert run_sweep([1e-3, 1e-4], [0, 1], trial, tmp_path, key) == first
    assert calls == [(1e-4, 1)]


def sweep_workspace(tmp: Path, model_dir: Path, validation: int = 6, budget: int = 6) -> Path:
    """A stage workspace: params.yaml for the sweep, and data/download with pool, validation and a test split."""
    rows = [{"id": f"r{i}", "prompt": r["question"], "response": r["answer"], "source": "t"}
            for i, r in enumerate(gsm_rows(40, seed=2))]  # fmt: skip
    write_jsonl(tmp / "data/download/pool.jsonl", rows[:24])
    write_jsonl(tmp / "data/download/validation.jsonl", rows[24 : 24 + validation])
    write_jsonl(tmp / "data/download/test.jsonl", rows[30:])
    params = {
        "model": {"base_model": str(model_dir), "cache_dir": str(tmp / ".cache/models")},
        "download": {"validation_size": validation},
        "finetune": {"losses": ["nll"], "max_length": 64, "step_floor": 3,
                     "train": {"per_device_train_batch_size": 2, "num_train_epochs": 1, "warmup_ratio": 0.0}},
        "sweep": {"learning_rates": [1.0e-4, 1.0e-2], "budget": budget, "seeds": [0]},
        "evaluate": {"max_length": 64, "batch_size": 4},
    }  # fmt: skip
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


def test_the_sweep_stage_chooses_on_validation_and_never_opens_the_test_split(tmp_path, tiny_model_dir, monkeypatch):
    from stages import sweep

    ws = sweep_workspace(tmp_path, tiny_model_dir)
    monkeypatch.chdir(ws)
    seen: list[str] = []
    listening = [True]

    def audit(event: str, args: tuple) -> None:
        if listening[0] and event == "open" and args and isinstance(args[0], str | bytes | Path):
            seen.append(str(args[0]))

    sys.addaudithook(audit)  # a hook cannot be removed: it goes quiet once the stage has run
    try:
        sweep.main([])
    finally:
        listening[0] = False
    out = json.loads((ws / "results/sweep/sweep.json").read_text())
    assert any(p.endswith("validation.jsonl") for p in seen)  # the hook does see the stage's reads
    assert not [p for p in seen if p.endswith("test.jsonl")]
    assert out["chosen_learning_rate"] in (1e-4, 1e-2) and out["n_validation"] == 6 and out["steps"] == 3
    assert {r["steps"] for r in out["rows"]} == {3}  # infosift.steps counts what Trainer takes
    by_rate = {r["learning_rate"]: r["validation_nll"] for r in out["rows"]}
    assert out["chosen_learning_rate"] == min(by_rate, key=by_rate.get)
    assert (ws / "results/sweep/sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((ws / ".cache/sweep").glob("*.json"))) == 2  # one per trial: a rerun resumes


@pytest.mark.parametrize(
    ("validation", "budget", "message"),
    [
        (0, 6, "validation.jsonl is empty: set download.validation_size"),
        (
            6,
            4,
            "4 examples give 2 optimizer steps, below finetune.step_floor 3: set finetune.train.num_train_epochs "
            "to 2 or more",
        ),
    ],  # fmt: skip
)
def test_no_validation_split_or_a_budget_below_the_step_floor_is_one_error_line(
    tmp_path, tiny_model_dir, validation, budget, message
):
    from tests.test_stage_errors import assert_one_error_line, run_stage

    ws = sweep_workspace(tmp_path, tiny_model_dir, validation=validation, budget=budget)
    assert_one_error_line(run_stage(ws, "stages.sweep"), message)
