"""End to end: `dvc repro` of the real dvc.yaml in a temporary git repo, on a tiny model and tiny data.

Asserts the manifests, metrics and MLflow runs it leaves, that a second `dvc repro` runs nothing but the look
at the sources, and that changing one selector's params reruns only that selector's branch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny import gsm_rows, save_tiny_model, write_jsonl

pytestmark = pytest.mark.slow  # a whole `dvc repro`: .ci/run runs it after the fast tests when time allows
ROOT = Path(__file__).resolve().parent.parent
TINY_PARAMS = {
    "model": {"base_model": None, "cache_dir": ".cache/models", "trust_remote_code": False},
    "download": {
        "dataset": "gsm8k",
        "mirror_dir": None,
        "hub_cache": ".cache/datasets",
        "pool_size": 40,
        "target_size": 8,
        "test_size": 10,
        "validation_size": 6,
        "seed": 0,
        "contaminate": {"share": 0.25, "seed": 0, "modes": ["swap", "truncate"]},
    },
    "embed": {"part": "response", "max_length": 64, "batch_tokens": 512, "shard_size": 16, "dtype": "float16"},
    "select": {
        "run": ["random", "fishersft-err", "gip-target", "dsir"],
        "budget_unit": "tokens",
        "budgets": [200, 400],
        "seeds": [0, 1],
        "partitions": 1,
        "engine": "local",
        "variants": {
            "random": {"selector": "random"},
            "fishersft": {"selector": "fishersft", "ridge": 1.0},
            "fishersft-err": {"selector": "fishersft", "ridge": 1.0, "weighting": "error"},
            "gip-target": {"selector": "gip", "ridge": 1.0, "query": "targets"},
            "dsir": {"selector": "dsir", "query": "dsir", "mode": "topk"},
        },
    },
    "finetune": {
        "losses": ["nll"],
        "max_length": 64,
        "infosft_p": 0.93,
        "lora": None,
        "save": "adapter",
        "processes": 1,
        "engine": "local",
        "ray": {"address": None, "num_workers": 2, "use_gpu": False},
        "step_floor": 0,
        "train": {
            "learning_rate": 1e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 3,
            "gradient_accumulation_steps": 1,
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
        },
    },
    "sweep": {"learning_rates": [1e-3, 1e-2], "budget": 6, "seeds": [0]},
    "evaluate": {
        "n_test": 6,
        "max_length": 64,
        "batch_size": 4,
        "gsm8k": {"limit": 2, "max_gen_toks": 8, "batch_size": 2},
        "mt_bench": {"limit": 1, "judge": "overlap", "judge_model": "base", "max_new_tokens": 8, "batch_size": 2},
    },
    "sketch": {
        "target": "data/download/target.jsonl",
        "sources": {"pool": "data/download/pool.jsonl", "mt_bench": "mt_bench"},
        "m": 64,
        "seed": 0,
        "batch_size": 4,
        "max_length": 64,
        "max_records": 5,
    },
    "synthetic": {
        "d": 10,
        "num_classes": 20,
        "tokens_per_sentence": 10,
        "pool_size": 80,
        "test_size": 50,
        "theta_scale": 1.0,
        "scale_range": [0.1, 2.0],
        "ridge": 1.0,
        "budgets": [10, 20],
        "seeds": 2,
        "selectors": {"random": {}, "fishersft": {"ridge": 1.0}},
    },
    "compare": {"bootstrap": 200, "mlflow": True, "experiment": "e2e", "log_models": True},
}

MT_QUESTIONS = [{"question_id": 101, "category": "math", "turns": ["what is 2 plus 3 ?", "and 4 ?"]}]
MT_REFERENCES = [{"question_id": 101, "choices": [{"index": 0, "turns": ["2 plus 3 = 5 . #### 5", "9"]}]}]
MT_JUDGE_PROMPTS = [
    {"name": "single-v1", "prompt_template": "[Q]{question}[A]{answer}"},
    {"name": "single-math-v1", "prompt_template": "[Q]{question}[R]{ref_answer_1}[A]{answer}"},
]



def write_mirror(mirror: Path, n_train: int, n_test: int) -> Path:
    """A download mirror folder: generated GSM8K train/test and the three MT-Bench files; ``mirror`` back."""
    write_jsonl(mirror / "gsm8k" / "train.jsonl", gsm_rows(n_train, seed=0))
    write_jsonl(mirror / "gsm8k" / "test.jsonl", gsm_rows(n_test, seed=99))
    write_jsonl(mirror / "mt_bench" / "question.jsonl", MT_QUESTIONS)
    write_jsonl(mirror / "mt_bench" / "reference_answer_gpt-4.jsonl", MT_REFERENCES)
    write_jsonl(mirror / "mt_bench" / "judge_prompts.jsonl", MT_JUDGE_PROMPTS)
    return mirror

def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git+DVC repo holding this project's dvc.yaml, stages and library, with tiny params."""
    tmp = tmp_path_factory.mktemp("e2e")
    repo = tmp / "repo"
    repo.mkdir()
    for item in ("dvc.yaml", "stages", "infosift"):
        src = ROOT / item
        (
            shutil.copytree(src, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy(src, repo / item)
        )
    mirror = write_mirror(tmp / "mirror", n_train=60, n_test=12)
    params = json.loads(json.dumps(TINY_PARAMS))
    params["model"]["base_model"] = str(save_tiny_model(tmp / "tiny-model"))
    params["download"]["mirror_dir"] = str(mirror)
    params["evaluate"]["mt_bench"]["dir"] = str(mirror / "mt_bench")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/data/\n/results/\n/models/\n/mlflow.db\n/mlartifacts/\n/.cache/\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@t"],
        ["git", "config", "user.name", "t"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "init"],
    ):
        sh(cmd, repo, env)
    out = sh(["dvc", "repro"], repo, env)
    return repo, env, out


VARIANTS = ("random", "fishersft-err", "gip-target", "dsir")
ITEMS = [(v, b, s) for v in VARIANTS for b in (200, 400) for s in (0, 1)]


def test_first_repro_writes_manifests_metrics_and_plots(repo):
    root, _, _ = repo
    pool = {json.loads(line)["id"] for line in (root / "data/download/pool.jsonl").read_text().splitlines()}
    costs = dict(
        zip(
            json.loads((root / "data/features/pool/ids.json").read_text()),
            __import__("numpy").load(root / "data/features/pool/costs.npy").tolist(),
            strict=True,
        )
    )
    for variant, budget, seed in ITEMS:
        manifest = json.loads((root / f"results/select/{variant}-{budget}/seed-{seed}/manifest.json").read_text())
        spent = sum(costs[i] for i in manifest["ids"])
        assert spent == manifest["info"]["train_tokens"] <= budget and set(manifest["ids"]) <= pool
        assert len(set(manifest["ids"])) == len(manifest["ids"]) and manifest["seed"] == seed
        assert manifest["inputs"] and len(manifest["hash"]) == 64 and manifest["info"]["unit"] == "tokens"
        subset = (root / f"results/select/{variant}-{budget}/seed-{seed}/subset.jsonl").read_text().splitlines()
        assert [json.loads(line)["id"] for line in subset] == manifest["ids"]  # the chosen records, in order
    # a deterministic selector selects once: the same picks for every seed; random differs by seed
    det = [json.loads((root / f"results/select/fishersft-err-200/seed-{s}/manifest.json").read_text()) for s in (0, 1)]
    assert det[0]["ids"] == det[1]["ids"] and det[0]["info"]["deterministic"]
    rnd = [json.loads((root / f"results/select/random-400/seed-{s}/manifest.json").read_text()) for s in (0, 1)]
    assert rnd[0]["ids"] != rnd[1]["ids"]
    for name in ["base"] + [f"{v}-{b}-s{s}-nll" for v, b, s in ITEMS]:
        metrics = json.loads((root / "results/evaluate" / name / "metrics.json").read_text())
        assert metrics["nll_per_token"] > 0 and metrics["n_examples"] == 6
        assert 0.0 <= metrics["gsm8k_exact_match_strict"] <= 1.0
        assert 1.0 <= metrics["mt_bench_score"] <= 10.0 and metrics["mt_bench_judge"] == "overlap"
        assert len((root / "results/evaluate" / name / "per_example.jsonl").read_text().splitlines()) == 6
    table = (root / "results/compare/table.csv").read_text().splitlines()
    assert len(table) == 1 + 1 + len(ITEMS)  # header, base, one row per (variant, budget, seed)
    evidence = (root / "results/compare/evidence.md").read_text()
    for v in VARIANTS[1:]:
        assert f"{v} @ 200 tokens:" in evidence and f"{v} @ 400 tokens:" in evidence
    ev = (root / "results/compare/evidence.csv").read_text().splitlines()
    assert len(ev) == 1 + 2 * len(VARIANTS) and "contaminated_share" in ev[0]
    manifest = json.loads((root / "data/download/manifest.json").read_text())
    assert manifest["contamination"]["n"] == 10 and len(manifest["contamination"]["ids"]) == 10
    for png in ("nll_per_token.png", "nll_vs_tokens.png", "gsm8k_exact_match_strict.png", "mt_bench_score.png"):
        assert (root / "results/compare" / png).read_bytes()[:4] == b"\x89PNG"
    assert (root / "models/fishersft-err-200-s0-nll/config.json").exists()
    ranking = json.loads((root / "results/sketch/ranking.json").read_text())
    assert {r["source"] for r in ranking["ranking"]} == {"pool", "mt_bench"}
    assert (root / "results/synthetic/prediction_error.png").exists()


def test_mlflow_has_parent_and_nested_variant_runs(repo):
    import mlflow

    root, env, _ = repo
    client = mlflow.tracking.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1
    names = {r.info.run_name for r in children}
    assert names == {"base"} | {f"{v}-{b}-s{s}-nll" for v, b, s in ITEMS}
    fisher = next(r for r in children if r.info.run_name == "fishersft-err-200-s1-nll")
    assert "nll_per_token" in fisher.data.metrics and fisher.data.params["seed"] == "1"
    assert fisher.data.tags["infosift.manifest_hash"]
    assert any(k.startswith("dvc.md5.results/select") for k in fisher.data.tags)
    assert any(k.startswith("dvc.md5.models") for k in fisher.data.tags)
    assert parents[0].data.tags["git_commit"] != "unknown"
    assert "evidence.dsir-200-nll.rel_pct" in parents[0].data.metrics
    artifacts = {a.path for a in client.list_artifacts(fisher.info.run_id)}
    assert {"manifest", "metrics", "per_example"} <= artifacts
    # MLflow 3 keeps flavored models as logged models of the run, not as run artifacts
    models = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id = '{fisher.info.run_id}'")
    assert [m.name for m in models] == ["model"]  # the mlflow.transformers flavor
    names = {d.dataset.name for d in fisher.inputs.dataset_inputs}
    assert {n.rsplit("-", 1)[-1] for n in names} >= {"pool", "test"} and any(n.endswith("-s1") for n in names)


# always run: they hash the sources outside the repository, and change nothing
FETCH = {"fetch", "fetch_mt_bench@evaluate", "fetch_mt_bench@sketch"}


def test_second_repro_runs_nothing(repo):
    root, env, _ = repo
    out = sh(["dvc", "repro"], root, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == FETCH, out
    status = json.loads(sh(["dvc", "status", "--json"], root, env))
    assert status == {stage: ["always changed"] for stage in FETCH}, status


def test_select_param_change_reruns_only_its_branch(repo):
    root, env, _ = repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["select"]["variants"]["fishersft-err"]["ridge"] = 2.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro"], root, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    expected = {"select@fishersft-err-200", "select@fishersft-err-400", "compare", *FETCH} | {
        f"{stage}@fishersft-err-{b}-{s}-nll" for stage in ("finetune", "evaluate") for b in (200, 400) for s in (0, 1)
    }
    assert ran == expected, ran
