"""Check a run's whole configuration before its first stage: a typo in compare's params costs seconds, not the
fine-tunes before it.

Each stage that will run (the chosen ones and every stage they read from, as `dvc repro` runs them) gets its
params checked by the stage's own check functions, and what it reads from outside the pipeline (the dataset,
MT-Bench, the base model, sketch's source files) is looked up: found, or fetchable from the hub, without
downloading anything. The first problem ends the run with one `error:` line naming the param.

    from flows.preflight import check_config
    check_config(["compare"])                               # compare and everything upstream of it
    check_config(["compare"], {"download.pool_size": 1000})  # as `dvc exp run -S` with these overrides would run
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import yaml

from infosift.errors import InfosiftError

ROOT = Path(__file__).resolve().parent.parent


def _root(path: str) -> str:
    """A dvc.yaml path up to its first ${...}: the fixed folder a matrix stage's item paths share."""
    return path.split("${")[0].rstrip("/")


def upstream(targets: list[str], dvc_yaml: Path | None = None) -> list[str]:
    """``targets`` and every stage whose outputs they read, directly or not, in dvc.yaml's order."""
    stages = yaml.safe_load((dvc_yaml or ROOT / "dvc.yaml").read_text())["stages"]

    def paths(stage: dict, key: str) -> list[str]:
        return [_root(str(next(iter(p)) if isinstance(p, dict) else p)) for p in stage.get(key) or []]

    def feeds(producer: str, consumer: str) -> bool:
        return any(
            d == o or d.startswith(o + "/") or o.startswith(d + "/")
            for o in paths(stages[producer], "outs")
            for d in paths(stages[consumer], "deps")
        )

    chosen, todo = set(targets), list(targets)
    while todo:
        consumer = todo.pop()
        for producer in stages:
            if producer not in chosen and feeds(producer, consumer):
                chosen.add(producer)
                todo.append(producer)
    return [s for s in stages if s in chosen]


# -- one check per stage: the stage's own param checks, then its outside inputs ---------------------------
def check_model() -> None:
    """model: its params, and a bundled model's file or a local model directory (a hub id is not looked up)."""
    from infosift.models import BUNDLED_PREFIX, bundled_gguf, check_model_dir
    from stages.model import model_params

    p = model_params()
    try:
        if p["base_model"].startswith(BUNDLED_PREFIX):
            bundled_gguf(p["base_model"][len(BUNDLED_PREFIX) :])
        elif p["base_model"].startswith(("/", "./", "../", "~")) or Path(p["base_model"]).exists():  # not a hub id
            check_model_dir(Path(p["base_model"]).expanduser(), bool(p["trust_remote_code"]))
    except ValueError as e:
        raise _stage_error(f"params.yaml model.base_model: {e}") from None


SAMPLE_ROWS = 200  # rows of the dataset read before a run: enough to catch a wrong field or answer pattern


def check_dataset() -> None:
    """download's params, the dataset's files found (or fetchable), and the first rows of the split evaluate
    scores read as download reads them: a field the file lacks fails here, not at the download stage."""
    from stages.download import checked_params, contamination_option

    p = checked_params()
    contamination_option(p.get("contaminate"), p["seed"])
    dataset_sample()


def dataset_sample() -> list[dict]:
    """The first SAMPLE_ROWS records of the test split (train when the test split is carved from it), normalised
    with download.fields; [] when the files come from the hub later (nothing is downloaded here)."""
    from itertools import islice

    from infosift.data import dataset_spec, normalize_row, read_rows
    from stages.download import checked_params, dataset_source

    p = checked_params()
    source = dataset_source(p, download=False)
    path = list(source.splits.values())[-1]  # train first, then test when there is one
    if not path.is_file():
        return []
    fields = p.get("fields") or {}
    spec = dataset_spec(source.name, fields.get("prompt"), fields.get("response"))
    try:
        return [normalize_row(row, spec, path, n) for n, row in islice(read_rows(path), SAMPLE_ROWS)]
    except InfosiftError as e:
        raise _stage_error(f"params.yaml download.dataset={p['dataset']!r}, download.fields={fields!r}: {e}") from None


def check_mt_bench(reader: str) -> None:
    """MT-Bench's files, when ``reader`` (evaluate, sketch) reads them in this configuration."""
    from stages.fetch import mt_bench_params, mt_bench_source

    folder, hub_cache, readers = mt_bench_params()
    if reader in readers:
        mt_bench_source(folder, hub_cache, download=False)


def check_embed() -> None:
    from stages.embed import checked_params

    checked_params()
    check_model()


def check_select() -> None:
    from stages._common import check_items, params
    from stages.select import checked_variant

    p = params("select")
    check_items(p.get("budgets"), "select.budgets", int, low=1)
    variants = p.get("variants")
    choices = tuple(variants) if isinstance(variants, dict) and variants else None
    for name in check_items(p.get("run"), "select.run", str, choices=choices):
        checked_variant(name, p)


def check_finetune() -> None:
    """finetune's own keys, then every loss's TrainConfig (trainer arguments by name and type, LoRA, P), then what
    this machine can run (processes, QLoRA, bf16): the checks the stage makes before it loads a model."""
    from stages._common import check_items, params
    from stages.finetune import LOSSES, check_processes, checked_finetune_params, train_config
    from stages.model import model_params

    ft = checked_finetune_params(params("finetune"))
    mp = model_params() if "model" in params() else {}
    for loss in check_items(ft.get("losses", ["nll"]), "finetune.losses", str, choices=LOSSES):
        check_processes(int(ft.get("processes", 1)), train_config(ft, loss, 0), mp)
    sel = params().get("select") or {}
    if sel.get("budget_unit") == "examples":  # the step floor is known now (for tokens, once select has run)
        for budget in sel.get("budgets") or []:
            check_floor(ft, budget, "select.budgets")
    check_model()


def check_floor(ft: dict, n_examples: int, where: str) -> None:
    """A budget of ``n_examples`` against finetune.step_floor: one line naming ``where`` when below it."""
    from infosift.errors import InfosiftError
    from infosift.steps import check_step_floor
    from infosift.train import DEFAULT_ARGS
    from stages.finetune import train_config

    args = {**DEFAULT_ARGS, **train_config(ft, "nll", 0).args}
    try:
        check_step_floor(n_examples, args, int(ft.get("step_floor", 0)), int(ft.get("processes", 1)))
    except InfosiftError as e:
        raise _stage_error(f"params.yaml {where}: {e}") from None


def check_sweep() -> None:
    """The sweep's rates, budget and seeds; a validation split to score on; its budget above the step floor."""
    from stages._common import params
    from stages.finetune import checked_finetune_params
    from stages.sweep import checked_params

    p = checked_params()
    if not int((params().get("download") or {}).get("validation_size", 0)):
        raise _stage_error("params.yaml download.validation_size: 0, but the sweep scores learning rates on the "
                           "validation split (never on test); hold out some train examples")  # fmt: skip
    check_floor(checked_finetune_params(params("finetune")), p["budget"], "sweep.budget")
    check_model()


def check_evaluate() -> None:
    from stages.evaluate import checked_params

    p = checked_params()
    check_answer_pattern(p.get("answer_pattern"))
    check_mt_bench("evaluate")
    check_model()


def check_answer_pattern(pattern: str | None) -> None:
    """evaluate.answer_pattern finds an answer in the dataset's responses (a GSM8K pattern on a new dataset would
    otherwise fail evaluate after every fine-tune); judged on the first rows, when the files are here."""
    from infosift.evaluate.answer_span import answer_char_span, compile_pattern

    sample = dataset_sample() if pattern else []
    compiled = compile_pattern(pattern) if sample else None
    if sample and not any(answer_char_span(r["response"], compiled) for r in sample):
        raise _stage_error(
            f"params.yaml evaluate.answer_pattern={pattern!r}: no match in the first {len(sample)} responses of "
            f"the dataset (first: {sample[0]['response'][:60]!r}); set it to this dataset's answer form, or null"
        )


def check_sketch() -> None:
    from stages.sketch import checked_params

    p = checked_params()
    for name, path in {"target": p["target"], **p["sources"]}.items():
        made_here = Path(path).parts[:1] in (("data",), ("results",))  # an output of a stage upstream
        if path != "mt_bench" and not made_here and not Path(path).exists():
            key = "sketch.target" if name == "target" else f"sketch.sources.{name}"
            raise _stage_error(f"params.yaml {key}: {path} not found")
    check_mt_bench("sketch")
    check_model()


def check_synthetic() -> None:
    from stages._common import params
    from stages.synthetic import config

    config(params("synthetic"))


def check_compare() -> None:
    from stages._common import params
    from stages.compare import check_compare_params, matrix_params

    cfg = params().get("compare") or {}
    check_compare_params(cfg)
    matrix_params(cfg.get("mlflow", True))


CHECKS: dict[str, Callable[[], None]] = {
    "fetch": check_dataset,
    "download": check_dataset,
    "fetch_mt_bench": lambda: None,  # fetches only for its readers, which check what they read
    "embed": check_embed,
    "select": check_select,
    "finetune": check_finetune,
    "sweep": check_sweep,
    "evaluate_base": check_evaluate,
    "evaluate": check_evaluate,
    "synthetic": check_synthetic,
    "sketch": check_sketch,
    "compare": check_compare,
}


def _stage_error(message: str) -> Exception:
    from stages._common import StageError

    return StageError(message)


def problems(stages: list[str], overrides: dict | None = None, root: Path | None = None) -> str | None:
    """The first configuration problem of a run of ``stages`` (and what they read from), as one line, or None.

    ``overrides``: dotted params set on top of params.yaml, as `dvc exp run -S key=value` sets them. ``root``: the
    workspace (dvc.yaml, params.yaml; relative paths in params start there), this repository by default.
    """
    root = root or ROOT
    import stages._common as common

    saved = common.OVERRIDES
    common.OVERRIDES = dict(overrides or {})
    try:
        with contextlib.chdir(root):
            done: set[Callable[[], None]] = set()
            for stage in upstream(stages, root / "dvc.yaml"):
                check = CHECKS.get(stage)
                if check is None:  # a stage of the user's own: its command checks itself when it runs
                    continue
                if check not in done:
                    done.add(check)
                    check()
    except (common.StageError, InfosiftError, OSError) as e:
        return common._one_line(e)
    except KeyError as e:
        return f"missing parameter or field {e}"
    finally:
        common.OVERRIDES = saved
    return None


class ConfigError(InfosiftError):
    """A run's configuration that would fail a stage: one line naming the param."""


def check_config(stages: list[str], overrides: dict | None = None) -> None:
    """Raise ConfigError if the run of ``stages`` is misconfigured (a flow's guard prints it as one `error:` line)."""
    if (problem := problems(stages, overrides)) is not None:
        raise ConfigError(problem)


def check_config_or_exit(stages: list[str], overrides: dict | None = None) -> None:
    """check_config for a script without such a guard: a problem ends it with one `error:` line and exit code 1."""
    if (problem := problems(stages, overrides)) is not None:
        raise SystemExit(f"error: {problem}")
