#!/usr/bin/env bash
# bench/cuda_path.py on a lent GPU machine (torch, transformers, peft there; no bitsandbytes, no bundled GGUF, at
# most 64 MiB of files a call), in one call: `prepare` here writes the ignored folder .device-speed/ (SmolLM2-135M's
# config.json + tokenizer files, no weights: the bench builds random ones; a GSM8K train slice; the bitsandbytes
# wheel for QLoRA when it fits the 64 MiB), `run` there installs the wheel into /tmp/site and writes the report to
# $OUT/cuda-path.txt (results/bench/cuda-path.txt without $OUT). Sized for about 3 minutes on an H100.
#
#   bench/device_stage_speed.sh prepare [--model-dir DIR]   # here; DIR: a converted model dir (default: the
#                                                           # bundled model's, converted once under .cache/models)
#   bench/device_stage_speed.sh run [ARGS for bench/cuda_path.py]   # there, carry .device-speed
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.device-speed
ROWS=512                  # GSM8K train records: --n-cuda's default; the CPU modes take the first 32
BNB=bitsandbytes==0.50.2  # has a CUDA 13.0 library (the machine's torch is cu130)
LIMIT=$((60 * 2**20))     # of the 64 MiB a call carries, the rest is the working tree (~2.5 MiB)

prepare() {
  local model_dir=
  while (($#)); do
    case $1 in
      --model-dir) model_dir=$2; shift ;;
      *) echo "error: prepare: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
  done
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file: ask git where the file is
  mkdir -p "$(dirname "$exclude")"
  grep -qx "/$DEV/" "$exclude" 2>/dev/null || echo "/$DEV/" >> "$exclude"
  if [ -z "$model_dir" ]; then
    model_dir=$(PYTHONPATH=$PWD python3 -c "from infosift.models import resolve_base_model as r
print(r('bundled:smollm2-135m-instruct', '.cache/models'))")
  fi
  rm -rf "$DEV" && mkdir -p "$DEV/model" "$DEV/data" "$DEV/whl"
  local f
  for f in config.json generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json \
           chat_template.jinja chat_template.json; do  # config + tokenizer (infosift.models.TOKENIZER_FILES)
    if [ -f "$model_dir/$f" ]; then cp "$model_dir/$f" "$DEV/model/"; fi
  done
  [ -f "$DEV/model/config.json" ] || { echo "error: $model_dir has no config.json" >&2; exit 2; }
  head -n "$ROWS" ../shared/data/gsm8k/train.jsonl > "$DEV/data/gsm8k-train.jsonl"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 -d "$DEV/whl" "$BNB"
  if (( $(du -sb "$DEV" | cut -f1) > LIMIT )); then
    rm -f "$DEV"/whl/*.whl
    echo "the bitsandbytes wheel does not fit the carry: the qlora row will say skipped"
  fi
  du -sh "$DEV"/*
}

run() {
  local out=${OUT:-results/bench}
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  if compgen -G "$DEV/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$DEV"/whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  mkdir -p "$out"
  python3 bench/cuda_path.py --config-dir "$DEV/model" --data "$DEV/data/gsm8k-train.jsonl" \
    --out "$out/cuda-path.txt" "$@"
}

verb=${1:-}; shift || true
case $verb in
  prepare) prepare "$@" ;;
  run) run "$@" ;;
  *) echo "usage: bench/device_stage_speed.sh prepare [--model-dir DIR] | run [ARGS for bench/cuda_path.py]" >&2
     exit 2 ;;
esac
