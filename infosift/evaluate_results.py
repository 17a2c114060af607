"""What evaluate wrote for each model, read back: results/evaluate/<name>/metrics.json (pooled numbers) and
per_example.jsonl (one held-out NLL per test record, which the paired intervals need), plus what each model was
trained on (its selection manifest, the steps and learning rate its fine-tune recorded). Paths are relative to
``root``, the workspace; a missing file names the stage to rerun.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from infosift.data import read_rows
from infosift.errors import DataError
from infosift.manifest import read_json_object, read_manifest
from infosift.tracking import numeric

EVALUATED = Path("results/evaluate")
MODELS = Path("models")
SELECTED = Path("results/select")


def load_metrics(name: str, root: str | Path = ".") -> dict:
    """One model's metrics.json (what compare tabulates and MLflow logs)."""
    path = Path(root) / EVALUATED / name / "metrics.json"
    if not path.exists():
        raise DataError(f"{path} missing; run evaluate@{name} first")
    return read_json_object(path)


def read_per_example(path: Path) -> dict[str, dict]:
    """id -> {id, nll_sum, n_tokens} as evaluate writes them, each row checked (file:line in errors)."""
    rows: dict[str, dict] = {}
    for lineno, row in read_rows(path):
        where = f"{path}:{lineno}"
        for key in ("id", "nll_sum", "n_tokens"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r} (has: {', '.join(sorted(row)) or 'none'})")
        if not isinstance(row["id"], str) or not row["id"]:
            raise DataError(f"{where}: field 'id' must be a non-empty string, got {row['id']!r}")
        nll = row["nll_sum"]
        if isinstance(nll, bool) or not isinstance(nll, int | float) or not math.isfinite(nll):
            raise DataError(f"{where}: field 'nll_sum' must be a finite number, got {nll!r}")
        n = row["n_tokens"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DataError(f"{where}: field 'n_tokens' must be a whole number >= 0, got {n!r}")
        if row["id"] in rows:
            raise DataError(f"{where}: id {row['id']!r} is scored twice")
        rows[row["id"]] = row
    return rows


def per_example(
    name: str, test_ids: list[str] | None, root: str | Path = "."
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, nll sums, token counts) of one model's held-out examples, in the order of the first model
    (``test_ids``: that model's ids; None for the first)."""
    path = Path(root) / EVALUATED / name / "per_example.jsonl"
    if not path.exists():
        raise DataError(f"{path} missing; rerun evaluate@{name} (per-example NLL is needed for paired intervals)")
    rows = read_per_example(path)
    ids = test_ids or list(rows)
    if set(ids) != set(rows):
        raise DataError(f"{path} scores other test examples than the other models; rerun evaluate")
    return ids, np.array([rows[i]["nll_sum"] for i in ids]), np.array([rows[i]["n_tokens"] for i in ids])


def trained_steps(name: str, root: str | Path = ".") -> tuple[float, float]:
    """(optimizer steps, learning rate) of one fine-tune from models/<name>/infosift.json; NaN where a model
    predates the record."""
    try:
        info = json.loads((Path(root) / MODELS / name / "infosift.json").read_text())
    except (OSError, ValueError):
        return float("nan"), float("nan")
    trained = info.get("trained") or {}
    return tuple(float(trained.get(k, float("nan"))) for k in ("steps", "learning_rate"))


def model_rows(
    items: Iterable[tuple[str, int, int, str]],
    item_name: Callable[..., str],
    contaminated: set[str] | None = None,
    root: str | Path = ".",
) -> list[dict]:
    """One row per evaluated model, the base model first: its numeric metrics and what it trained on.

    ``items``: the (variant, budget, seed, loss) fine-tunes; ``item_name(variant, budget[, seed, loss])`` the
    pipeline's names for a selection and a model; ``contaminated``: the pool ids made bad on purpose, whose share
    in each selection becomes ``contaminated_share`` (None: a clean pool, no such column).
    """
    base = {"variant": "base", "selector": "base", "budget": 0, "seed": 0, "loss": "-"}
    rows = [{**base, **numeric(load_metrics("base", root))}]
    for variant, budget, seed, loss in items:
        name, selection = item_name(variant, budget, seed, loss), item_name(variant, budget)
        path = Path(root) / SELECTED / selection / f"seed-{seed}" / "manifest.json"
        if not path.exists():
            raise DataError(f"{path} missing; run select@{selection} first")
        manifest = read_manifest(path)
        row = {"variant": name, "selector": variant, "budget": budget, "seed": seed, "loss": loss}
        row["train_tokens"] = manifest.get("info", {}).get("train_tokens", 0)
        row["n_train"] = len(manifest["ids"])
        if contaminated is not None:
            ids = manifest["ids"]
            row["contaminated_share"] = float(np.mean([i in contaminated for i in ids])) if ids else 0.0
        rows.append({**row, **numeric(load_metrics(name, root))})
    return rows
