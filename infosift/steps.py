"""How many optimizer steps a fine-tune takes, and the floor below which its evidence means little.

A selection's effect shows only once the model has taken enough steps to learn more than the answer format:
with 4 steps every selector that buys a few more (shorter examples, a larger budget) wins. The evidence
protocol therefore sets a floor (``finetune.step_floor``) and refuses a budget below it, with the epochs that
would lift it, rather than measure noise. The count is the one transformers' Trainer takes:

    batches per epoch  = ceil(n_examples / (per_device_train_batch_size * processes))
    steps per epoch    = ceil(batches per epoch / gradient_accumulation_steps)
    steps              = max_steps if max_steps > 0 else ceil(num_train_epochs * steps per epoch)

Fixed steps (``max_steps``) make every budget train for the same steps, so a learning rate swept at one budget
has the same schedule at all of them; they must still reach every example once (``steps per epoch`` or more),
or part of the budget is bought and never trained on.
"""

from __future__ import annotations

import math

from infosift.errors import InfosiftError


def optimizer_steps(n_examples: int, args: dict, processes: int = 1) -> int:
    """Optimizer steps of a fine-tune on ``n_examples`` with TrainingArguments ``args`` (infosift's defaults
    filled in by the caller or here: batch 4, accumulation 1, 1 epoch)."""
    if args.get("max_steps", -1) > 0:
        return int(args["max_steps"])
    batch = int(args.get("per_device_train_batch_size", 4)) * max(1, processes)
    per_epoch = math.ceil(math.ceil(n_examples / batch) / int(args.get("gradient_accumulation_steps", 1)))
    return math.ceil(float(args.get("num_train_epochs", 1)) * max(per_epoch, 1))


def epochs_for(floor: int, n_examples: int, args: dict, processes: int = 1) -> int:
    """The fewest whole epochs that give ``n_examples`` at least ``floor`` optimizer steps."""
    per_epoch = optimizer_steps(n_examples, {**args, "num_train_epochs": 1, "max_steps": -1}, processes)
    return math.ceil(floor / per_epoch)


def check_step_floor(n_examples: int, args: dict, floor: int, processes: int = 1) -> int:
    """The fine-tune's optimizer steps; an InfosiftError naming the epochs that would reach ``floor`` when below,
    or when fixed ``max_steps`` end before one epoch."""
    steps = optimizer_steps(n_examples, args, processes)
    epoch = optimizer_steps(n_examples, {**args, "num_train_epochs": 1, "max_steps": -1}, processes)
    if args.get("max_steps", -1) > 0 and steps < epoch:
        raise InfosiftError(
            f"finetune.train.max_steps {steps} is less than one epoch of {n_examples} examples ({epoch} optimizer "
            f"steps): part of the selection would never be trained on; set max_steps to {epoch} or more"
        )
    if steps < floor:
        fix = (
            f"finetune.train.max_steps to {floor} or more"
            if args.get("max_steps", -1) > 0
            else f"finetune.train.num_train_epochs to {epochs_for(floor, n_examples, args, processes)} or more, "
            "a smaller batch, or a larger budget"
        )
        raise InfosiftError(
            f"{n_examples} examples give {steps} optimizer steps, below finetune.step_floor {floor}: set {fix}"
        )
    return steps
