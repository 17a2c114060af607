"""The evidence profile (params.evidence.yaml) and how flows.evidence composes it: fast, no DVC run."""

from __future__ import annotations

import pytest
import yaml

from flows import evidence

PARAMS = yaml.safe_load((evidence.ROOT / "params.yaml").read_text())
PROFILE = yaml.safe_load(evidence.PROFILE.read_text())


def blocks() -> list[tuple[str, dict]]:
    return (
        [("overrides", PROFILE["overrides"])]
        + [(f"pools.{k}", v) for k, v in PROFILE["pools"].items()]
        + [(f"profiles.{k}", v) for k, v in PROFILE["profiles"].items()]
    )


@pytest.mark.parametrize(("where", "block"), blocks())
def test_every_override_names_a_real_param(where, block):
    """`dvc exp run -S` would fail an hour in on a key that params.yaml lacks: catch it here instead. A trainer
    argument (finetune.train passes any through, set with `++`) must be one TrainingArguments knows."""
    from transformers import TrainingArguments

    for key in block:
        if key.startswith(evidence.PASS_THROUGH):
            assert key.removeprefix(evidence.PASS_THROUGH) in TrainingArguments.__dataclass_fields__, key
            continue
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{where}: {key} is not in params.yaml"
            node = node[part]


def test_an_override_params_yaml_lacks_is_one_line_naming_it(tmp_path):
    """`dvc exp run -S` would refuse it without naming the file or key; a trainer argument may be new."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": {"test_split": "test"}}))
    evidence.check_keys_exist({"download.test_split": None, "finetune.train.max_steps": 8}, tmp_path / "params.yaml")
    for typo in ("download.test_splt", "download.test_split.x", "dowload.test_split"):
        with pytest.raises(SystemExit, match=rf"error: params.evidence.yaml: {typo} is not a param of params.yaml"):
            evidence.check_keys_exist({typo: 1}, tmp_path / "params.yaml")


def test_trainer_arguments_are_added_or_overridden_and_other_keys_must_exist():
    args = evidence.set_args({"finetune.train.max_steps": 32, "select.budgets": [8, 16], "evaluate.n_test": None})
    assert args == ["-S", "++finetune.train.max_steps=32", "-S", "select.budgets=[8, 16]", "-S", "evaluate.n_test=null"]


def test_every_variant_the_profiles_run_is_defined():
    variants = set(PARAMS["select"]["variants"])
    for where, block in blocks():
        assert set(block.get("select.run", [])) <= variants, where


def test_pool_then_profile_take_precedence():
    profile = {
        "overrides": {"a": 1, "b": 1, "c": 1},
        "pools": {"p": {"b": 2, "c": 2}},
        "profiles": {"x": {"c": 3}},
    }
    assert evidence.overrides(profile, "p") == {"a": 1, "b": 2, "c": 2}
    assert evidence.overrides(profile, "p", "x") == {"a": 1, "b": 2, "c": 3}
    assert profile["overrides"] == {"a": 1, "b": 1, "c": 1}  # not mutated
    assert evidence.result_dir("p").name == "p" and evidence.result_dir("p", "x").name == "p-x"


def test_the_protocol_compares_at_equal_examples_above_the_step_floor_and_the_tokens_profile_at_equal_tokens():
    from infosift.steps import optimizer_steps

    flat = evidence.overrides(PROFILE, "contaminated")
    assert flat["select.budget_unit"] == "examples" and "random" in flat["select.run"]
    assert len(flat["select.budgets"]) >= 3 and max(flat["select.budgets"]) >= 2 * min(flat["select.budgets"])
    train = {k.removeprefix("finetune.train."): v for k, v in flat.items() if k.startswith("finetune.train.")}
    assert optimizer_steps(min(flat["select.budgets"]), train) >= flat["finetune.step_floor"] >= 24
    assert len(flat["sweep.learning_rates"]) >= 4 and "finetune.train.learning_rate" not in flat  # swept per pool
    assert min(flat["sweep.learning_rates"]) <= 2e-5 and max(flat["sweep.learning_rates"]) >= 1e-3
    assert flat["download.validation_size"] > 0
    assert flat["download.contaminate.share"] == PROFILE["pools"]["contaminated"]["download.contaminate.share"]
    gpu = evidence.overrides(PROFILE, "clean", "gpu")
    gtrain = {**train, **{k.removeprefix("finetune.train."): v for k, v in gpu.items() if k.startswith("finetune.t")}}
    assert optimizer_steps(min(gpu["select.budgets"]), gtrain) >= flat["finetune.step_floor"]
    assert evidence.overrides(PROFILE, "clean", "tokens")["select.budget_unit"] == "tokens"


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--pools", "dirty"], "unknown pool 'dirty'"), (["--profile", "tpu"], "unknown profile 'tpu'")],
)
def test_unknown_names_fail_before_any_run(argv, message, monkeypatch):
    monkeypatch.setattr(evidence, "run_pool", lambda *a: pytest.fail("ran before checking every name"))
    with pytest.raises(SystemExit, match=message):
        evidence.main(argv)


def test_a_budget_below_the_step_floor_stops_the_evidence_before_any_run():
    from flows.preflight import problems

    flat = {**evidence.overrides(PROFILE, "clean"), "select.budgets": [4, 8, 12], "finetune.train.max_steps": -1,
            "finetune.train.num_train_epochs": 3}  # fmt: skip
    assert problems(["sweep", "compare"], flat) == (
        "params.yaml select.budgets: 4 examples give 12 optimizer steps, below finetune.step_floor 24: set "
        "finetune.train.num_train_epochs to 6 or more, a smaller batch, or a larger budget"
    )
    fixed = {**evidence.overrides(PROFILE, "clean"), "finetune.train.max_steps": 20}
    assert problems(["compare"], fixed) == (
        "params.yaml select.budgets: 8 examples give 20 optimizer steps, below finetune.step_floor 24: set "
        "finetune.train.max_steps to 24 or more"
    )
    short = {**evidence.overrides(PROFILE, "clean"), "finetune.train.max_steps": 24, "select.budgets": [8, 30]}
    assert problems(["compare"], short) == (
        "params.yaml select.budgets: finetune.train.max_steps 24 is less than one epoch of 30 examples (30 optimizer "
        "steps): part of the selection would never be trained on; set max_steps to 30 or more"
    )
