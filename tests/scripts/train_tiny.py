"""Fine-tune the tiny test model once, as a separate process (under torchrun, Ray or plain python), and write
rank 0's loss history and model to OUT: the reference the distributed and resume tests compare against.

usage: python tests/scripts/train_tiny.py OUT CKPT BATCH ACCUM [STEPS]

With TRAIN_TINY_HOLD_AT=N the run stops moving once checkpoint N is on disk (it writes CKPT/held and sleeps), so
a test can kill it at a known step however fast the machine is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.tiny import build_model, build_tokenizer, gsm_rows  # noqa: E402


def records(n: int = 24) -> list[dict]:
    return [{"id": f"r{i}", "prompt": r["question"], "response": r["answer"], "source": "t"}
            for i, r in enumerate(gsm_rows(n, seed=3))]  # fmt: skip


def hold_at(step: int):
    """A callback that parks the run after the checkpoint of `step` is saved, writing `held` into the checkpoint dir
    (the trainer's output_dir) first: the kill lands at that step. The finetune stage's resume test injects it too."""
    import time

    from transformers import TrainerCallback

    class Hold(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                (Path(args.output_dir) / "held").write_text(str(step))
                time.sleep(600)

    return Hold()


def main(out: str, ckpt: str, batch: int, accum: int, steps: int = 6) -> None:
    from infosift.train import TrainConfig, finetune

    hold = os.environ.get("TRAIN_TINY_HOLD_AT")
    callbacks = [hold_at(int(hold))] if hold else None

    tok = build_tokenizer()
    model = build_model(len(tok), seed=0)
    cfg = TrainConfig(max_length=64, args={
        "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum, "learning_rate": 1e-2,
        "max_steps": steps, "save_steps": 1, "warmup_steps": 0, "use_cpu": True})  # fmt: skip
    res = finetune(
        model, tok, records(), Path(out) / "model", cfg, checkpoint_dir=ckpt, progress=False, callbacks=callbacks
    )
    if int(os.environ.get("RANK", "0")) == 0:
        (Path(out) / "history.json").write_text(json.dumps({"history": res.history, "resumed": res.resumed_from}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *(int(a) for a in sys.argv[5:]))
