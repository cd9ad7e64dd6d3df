#!/usr/bin/env bash
# Multi30k task 1 with the installed `s2s` command only:
#   preprocess -> train -> average -> translate test2016, test2017, mscoco2017 -> score
#
#   MULTI30K=/path/to/multi30k/data/task1/raw recipes/multi30k/run.sh [en-de|de-en] [CONFIG.yaml]
#
# CONFIG defaults to cpu-90min.yaml (the best model 2 CPU cores train in ~90 minutes);
# cpu-15min.yaml is the 15-minute one, gpu.yaml a bigger model for a GPU. Environment: WORK (default
# recipes/multi30k/work), QUICK=1 for the short CI variant (a few hundred updates), EXTRA for more
# KEY=VALUE overrides. Prints a results table and writes a plot of validation BLEU over training.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pair=${1:-en-de}
config=${2:-$here/cpu-90min.yaml}
src=${pair%-*} tgt=${pair#*-}
data=${MULTI30K:?set MULTI30K to the Multi30k task-1 raw directory, e.g. ../shared/data/multi30k}
name=$(basename "$config" .yaml)
work=${WORK:-$here/work}/$pair-$name
command -v s2s >/dev/null || { echo "s2s is not on PATH (source .venv/bin/activate)" >&2; exit 1; }
extra=(${EXTRA:-})
if [ "${QUICK:-0}" = 1 ]; then
  extra+=(train.max_minutes=null train.max_epochs=null train.max_updates=200 train.validate_every=100
          train.save_every=50 model.embed_dim=64 model.hidden_size=128 model.encoder_hidden_size=128
          train.max_tokens=1024)
fi
tests=(test_2016_flickr test_2017_flickr test_2017_mscoco)
mkdir -p "$work"

echo "== preprocess $pair" >&2
s2s preprocess --src-lang "$src" --tgt-lang "$tgt" --train "$data/train" --valid "$data/val" \
  --vocab-size 8000 --joint --workers 2 --dest "$work/data" --force >/dev/null

echo "== train ($name)" >&2
SECONDS=0
s2s train "$config" --data "$work/data" --save-dir "$work/model" "${extra[@]}" >/dev/null
echo "$SECONDS" > "$work/train_seconds"

echo "== average the last 5 checkpoints" >&2
s2s average --save-dir "$work/model" --last 5 -o "$work/model/averaged.pt" >/dev/null

for test in "${tests[@]}"; do
  echo "== translate and score $test" >&2
  s2s translate -c "$work/model/averaged.pt" -i "$data/$test.$src.gz" -o "$work/$test.hyp" --beam 5
  s2s score -r "$data/$test.$tgt.gz" -i "$work/$test.hyp" --metrics bleu,chrf,bleu_tok_lc \
    --format json > "$work/$test.score.json"
done
python3 "$here/report.py" "$work" "$pair" "${tests[@]}"
