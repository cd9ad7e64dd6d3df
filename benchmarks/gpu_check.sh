#!/usr/bin/env bash
# The whole GPU check in one run (under 10 minutes on one H100): the `gpu` tests, the training
# benchmark, the Multi30k en-de GPU recipe (time to quality), reduced-precision decoding on that
# real model, and the decoding benchmark. Runs from the source tree (PYTHONPATH=.) on a machine
# that has torch, sacrebleu, sentencepiece, typer, rich, pyyaml and pytest but no network and no
# s2s install. The data travels in the ignored folder gpu_data/ (see DEVELOPERS.md):
#
#   gpu_data/multi30k/               Multi30k task-1 raw files (en, de)
#   gpu_data/multi30k-en-de-bpe8000/ `s2s preprocess` of them (joint BPE 8000), for the benchmark
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh    # BUDGET_S (default 570) bounds the whole run
#
# Everything lands in $OUT: summary.log (all output) and results.tgz (logs, JSON, the recipe's
# metrics, scores and plot), rewritten after every stage so a cut-off run still leaves its results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
BUDGET_S=${BUDGET_S:-570}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d /tmp/s2s-gpu-check.XXXXXX)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p "$work/bin"
printf '#!/bin/sh\nexec python3 -m s2s_cli "$@"\n' > "$work/bin/s2s"
chmod +x "$work/bin/s2s"
export PATH=$work/bin:$PATH
exec > >(tee -a "$OUT/summary.log") 2>&1
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

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c 'import torch, sys; print("python", sys.version.split()[0], "| torch", torch.__version__,
  "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version(),
  "| gpu", torch.cuda.get_device_name(0))'
mkdir -p "$work/tests" "$work/bench" "$work/recipe"

stage "gpu tests" 110 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider --durations=15 \
  -o junit_family=xunit2 --junitxml="$work/tests/junit.xml"

stage "training benchmark" 120 python3 benchmarks/gpu.py train \
  --data gpu_data/multi30k-en-de-bpe8000 --out "$work/bench/train.json"

echo "== recipe: MULTI30K=gpu_data/multi30k recipes/multi30k/run.sh en-de recipes/multi30k/gpu.yaml"
MULTI30K=$PWD/gpu_data/multi30k WORK=$work/recipe \
  stage "multi30k recipe" 300 bash recipes/multi30k/run.sh en-de recipes/multi30k/gpu.yaml
run=$work/recipe/en-de-gpu
[ -f "$run/model/train.log" ] && grep -E "valid \||stopped|GPU memory" "$run/model/train.log" | tail -40
chosen=$(cat "$run/chosen_checkpoint" 2>/dev/null || echo checkpoint_best)
model=$run/model/$chosen.pt

if [ -f "$model" ]; then
  S2S_REAL_MODEL=$model S2S_REAL_SOURCE=gpu_data/multi30k/test_2016_flickr.en.gz \
  S2S_REAL_REFERENCE=gpu_data/multi30k/test_2016_flickr.de.gz \
    stage "reduced-precision decoding on the Multi30k model" 40 python3 -m pytest -q -s -m gpu \
      tests/gpu -p no:cacheprovider -k real_model
  stage "decoding benchmark" 100 python3 benchmarks/gpu.py decode --checkpoint "$model" \
    --source gpu_data/multi30k/test_2016_flickr.en.gz --extra gpu_data/multi30k/train.en.gz \
    --budget-s 60 --out "$work/bench/decode.json"
else
  echo "== no trained model at $model: decoding checks skipped"
fi
pack
echo "== done in $(( SECONDS - start ))s; results in $OUT"
