#!/usr/bin/env bash
# The whole GPU check in one run (about 9 minutes on one H100 or H200): the training benchmark
# (alone on the GPU: s2s's choices and the reference loop in interleaved turns, a profile of one
# GNMT-shaped update, then the trainer itself), then the Multi30k en-de GPU recipe
# with two seeds side by side (time to quality) while the `gpu` tests run beside them, the
# two-model ensemble, reduced-precision decoding on the real model, and the decoding benchmark.
# Runs from the source tree (PYTHONPATH=.) on a machine that has torch, sacrebleu, sentencepiece,
# typer, rich, pyyaml and pytest (pytest-xdist if there: the tests then run 4-way) but no network
# and no s2s install. The data travels in the ignored folder gpu_data/ (see DEVELOPERS.md):
#
#   gpu_data/multi30k/               Multi30k task-1 raw files (en, de)
#   gpu_data/multi30k-en-de-bpe8000/ `s2s preprocess` of them (joint BPE 8000), for the benchmark
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh    # BUDGET_S (default 560) bounds the whole run
#   DECODE_MODEL=gpu_data/model.pt ...   # decode first, alone on the GPU, with this checkpoint
#                                        # (the recipe's model size), and not again at the end
#   TRAIN_BENCH=0 ...                    # leave the training benchmark out
#   RECIPE=0 ...                         # leave the recipe out: the gpu tests run alone
#   DRY=1 OUT=/tmp/dry bash benchmarks/gpu_check.sh   # the same steps on the CPU, tiny: checks
#                                                    # the script itself before GPU time is spent
#
# Everything lands in $OUT: summary.log (all output) and results.tgz (logs, JSON, the recipe's
# metrics, scores and plot), rewritten after every stage so a cut-off run still leaves its results.
# The recipe's wall times are measured with the tests sharing the GPU: an upper bound.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
BUDGET_S=${BUDGET_S:-560}
source benchmarks/gpu_env.sh gpu-check summary.log
start=$SECONDS

left() { echo $(( BUDGET_S - (SECONDS - start) )); }
cap() { local l; l=$(left); (( l < $1 )) && echo "$l" || echo "$1"; }  # min(stage cap, time left)
pack() { tar czf "$OUT/results.tgz" -C "$work" --exclude=bin --exclude='*.pt' --exclude=data . 2>/dev/null; }
stage() {  # stage NAME CAP_S COMMAND...: run with a time limit, report its exit status
  local name=$1 limit; limit=$(cap "$2"); shift 2
  if (( limit < 20 )); then echo "== $name: skipped, ${limit}s left"; return; fi
  echo "== $name (limit ${limit}s, $(( SECONDS - start ))s in)"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@"
  echo "== $name: exit $? after $(( SECONDS - t0 ))s"
  pack
}

# two CPU threads per test process: the recipe runs beside the tests and is bound by its host side
dry=() recipe_extra=() tests_env=(OMP_NUM_THREADS=2) tests_cap=150
if [ "${DRY:-0}" = 1 ]; then
  dry=(--device cpu) tests_env=(S2S_GPU_TESTS_ON_CPU=1 OMP_NUM_THREADS=2) tests_cap=400
  recipe_extra=(train.max_minutes=null train.max_updates=30 train.validate_every=15
                train.save_every=15 model.embed_dim=32 model.hidden_size=32
                model.encoder_hidden_size=32 train.max_tokens=512 train.precision=fp32)
fi

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "(no nvidia-smi)"
python3 -c 'import torch, sys; print("python", sys.version.split()[0], "| torch", torch.__version__,
  "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version(),
  "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")'
mkdir -p "$work/tests" "$work/bench"

decode_sizes=()
[ "${DRY:-0}" = 1 ] && decode_sizes=(--big-lines 300 --big-batch 64)
decode_bench() {  # decode_bench CHECKPOINT CAP_S BUDGET_S
  stage "decoding benchmark" "$2" python3 benchmarks/gpu.py decode "${dry[@]}" "${decode_sizes[@]}" \
    --checkpoint "$1" --source gpu_data/multi30k/test_2016_flickr.en.gz \
    --extra gpu_data/multi30k/train.en.gz --budget-s "$3" --profile --out "$work/bench/decode.json"
}
real_model_test() {  # real_model_test CHECKPOINT CAP_S: bf16/fp16 decoding against fp32
  stage "reduced-precision decoding on the Multi30k model" "$2" env "${tests_env[@]}" \
    S2S_REAL_MODEL="$1" S2S_REAL_SOURCE=gpu_data/multi30k/test_2016_flickr.en.gz \
    S2S_REAL_REFERENCE=gpu_data/multi30k/test_2016_flickr.de.gz \
    python3 -m pytest -q -s -m gpu tests/gpu -p no:cacheprovider -k real_model
}
if [ -n "${DECODE_MODEL:-}" ]; then
  decode_bench "$DECODE_MODEL" 200 170
  real_model_test "$DECODE_MODEL" 40
fi

train_sizes=() trainer_sizes=(--updates 300 --turns 2)
[ "${DRY:-0}" = 1 ] && train_sizes=(--updates 2 --gnmt-updates 1 --gnmt-sentences 2) \
  trainer_sizes=(--updates 6 --turns 1)
if [ "${TRAIN_BENCH:-1}" = 1 ]; then
  # s2s's choices and the reference loop measured in turns (the medians are the claim), then
  # the trainer itself with an update's numbers read late and read at once
  stage "training benchmark" 170 python3 benchmarks/gpu.py train --profile --interleave 5 \
    --only interleaved "${dry[@]}" "${train_sizes[@]}" \
    --data gpu_data/multi30k-en-de-bpe8000 --out "$work/bench/train.json"
  stage "trainer benchmark" 90 python3 benchmarks/gpu.py trainer "${dry[@]}" "${trainer_sizes[@]}" \
    --data gpu_data/multi30k-en-de-bpe8000 --out "$work/bench/trainer.json"
fi

if [ "${RECIPE:-1}" = 0 ]; then  # the gpu tests alone, no recipe
  stage "gpu tests" "$tests_cap" env "${tests_env[@]}" python3 -m pytest -q -rfE -m gpu tests/gpu \
    -p no:cacheprovider --durations=10 -o junit_family=xunit2 --junitxml="$work/tests/junit.xml"
  pack
  echo "== done in $(( SECONDS - start ))s; results in $OUT"
  exit 0
fi

# The recipe, seeds 1 and 2 side by side, each in its own process (the GPU is launch-bound at this
# model size, so the two barely slow each other), and the gpu tests beside them.
xdist=()
python3 -c 'import xdist' 2>/dev/null && xdist=(-n 4)
recipe_limit=$(cap 330)
echo "== recipe: MULTI30K=gpu_data/multi30k recipes/multi30k/run.sh en-de recipes/multi30k/gpu.yaml," \
  "EXTRA=train.seed=1 and =2 side by side (limit ${recipe_limit}s, $(( SECONDS - start ))s in)"
recipe_pids=()
for seed in 1 2; do
  MULTI30K=$PWD/gpu_data/multi30k WORK=$work/recipe-seed$seed EXTRA="train.seed=$seed ${recipe_extra[*]}" \
    timeout --kill-after=5 "$recipe_limit" bash recipes/multi30k/run.sh en-de recipes/multi30k/gpu.yaml \
    > "$work/recipe-seed$seed.log" 2>&1 &
  recipe_pids+=($!)
done
stage "gpu tests (beside the recipe)" "$tests_cap" env "${tests_env[@]}" python3 -m pytest -q -rfE -m gpu \
  tests/gpu -p no:cacheprovider "${xdist[@]}" --durations=10 -o junit_family=xunit2 --junitxml="$work/tests/junit.xml"
wait "${recipe_pids[@]}"  # by PID: a bare wait would also wait for the tee above (bash 5.1+)
echo "== recipe done ($(( SECONDS - start ))s in)"
runs=()
for seed in 1 2; do
  run=$work/recipe-seed$seed/en-de-gpu
  echo "-- seed $seed"
  tail -25 "$work/recipe-seed$seed.log"
  [ -f "$run/model/train.log" ] && grep -E "valid \||stopped|GPU memory|done after" "$run/model/train.log" | tail -30
  [ -f "$run/test_2016_flickr.score.json" ] && runs+=("$run")  # a run that finished
done
pack
if [ ${#runs[@]} -eq 2 ]; then
  stage "ensemble of the two seeds" 60 env MULTI30K="$PWD/gpu_data/multi30k" OUT="$work/ensemble" \
    bash recipes/multi30k/ensemble.sh en-de "${runs[@]}"
fi
if [ -n "${DECODE_MODEL:-}" ]; then
  echo "== decoding measured first, on $DECODE_MODEL"
elif [ ${#runs[@]} -ge 1 ]; then
  model=${runs[0]}/model/$(cat "${runs[0]}/chosen_checkpoint").pt
  real_model_test "$model" 40
  decode_bench "$model" 100 45
else
  echo "== no trained model: decoding checks skipped"
fi
pack
echo "== done in $(( SECONDS - start ))s; results in $OUT"
