#!/usr/bin/env bash
# The Multi30k GPU recipe twice side by side on one GPU, differing only by overrides: time to
# quality of two settings under the same conditions (the recipe is bound by its host side at this
# model size, so two runs barely slow each other; both share whatever the GPU gives).
#
#   OUT=DIR A="train.precision=bf16" B="train.precision=fp32" bash benchmarks/gpu_recipe_ab.sh
#
# Runs from the source tree like gpu_check.sh (data in gpu_data/multi30k). Each run's EXTRA is
# "$COMMON $A" or "$COMMON $B" (COMMON default: train.seed=1). Writes two files to $OUT (the device
# tool brings back only a few): ab.log (everything printed) and ab.tgz (each run's recipe log,
# train.log, metrics.jsonl, results table, scores and translations; no checkpoints, no data).
# DRY=1: tiny, on the CPU (checks the script before GPU time is spent).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
source benchmarks/gpu_env.sh ab ab.log
common=${COMMON:-train.seed=1}
if [ "${DRY:-0}" = 1 ]; then
  common+=" train.max_minutes=null train.max_updates=20 train.validate_every=10 train.save_every=10
    model.embed_dim=32 model.hidden_size=32 model.encoder_hidden_size=32 train.max_tokens=512
    train.precision=fp32"
fi
pids=()
for side in A B; do
  echo "== $side: EXTRA=\"$common ${!side}\""
  MULTI30K=$PWD/gpu_data/multi30k WORK=$work/$side EXTRA="$common ${!side}" \
    timeout --kill-after=5 "${LIMIT_S:-400}" bash recipes/multi30k/run.sh en-de recipes/multi30k/gpu.yaml \
    > "$work/recipe-$side.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
for side in A B; do
  run=$work/$side/en-de-gpu
  echo "-- $side (${!side})"
  tail -20 "$work/recipe-$side.log"
  [ -f "$run/model/train.log" ] && grep -E "valid \||done after" "$run/model/train.log" | tail -30
done
tar czf "$OUT/ab.tgz" -C "$work" --exclude='*.pt' --exclude=data --exclude=bin .
