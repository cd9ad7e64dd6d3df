#!/usr/bin/env bash
# Multi30k task 1 with the installed `s2s` command only:
#   preprocess -> train -> average -> translate every test set the pair has -> score
#
#   MULTI30K=/path/to/multi30k/data/task1/raw recipes/multi30k/run.sh [SRC-TGT] [CONFIG.yaml]
#
# SRC-TGT is any pair of en, de, fr, cs (default en-de).
#
# CONFIG defaults to cpu-90min.yaml (the best model 2 CPU cores train in at most 90 minutes);
# cpu-15min.yaml is the 15-minute one, gpu.yaml a bigger model for a GPU. Environment: WORK (default
# recipes/multi30k/work), QUICK=1 for the short CI variant (a few hundred updates), EXTRA for more
# KEY=VALUE overrides, VOCAB_SIZE (joint BPE, default 8000). Prints a results table and writes a plot of validation BLEU over training.
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
  extra+=(train.max_minutes=null train.max_epochs=null train.max_updates=300 train.validate_every=150
          train.save_every=60 train.warmup_updates=50 train.lr=0.005 model.dropout=0.1
          model.embed_dim=64 model.hidden_size=128 model.encoder_hidden_size=128 train.max_tokens=1024)
fi
# The test sets this pair has: Czech has test2016 and test2018 only, German and French more.
tests=()
for file in "$data"/test_*."$src".gz; do
  test=$(basename "$file" ".$src.gz")
  [ -e "$data/$test.$tgt.gz" ] && tests+=("$test")
done
[ ${#tests[@]} -gt 0 ] || { echo "no test set in $data has both $src and $tgt" >&2; exit 1; }
mkdir -p "$work"

echo "== preprocess $pair" >&2
s2s preprocess --src-lang "$src" --tgt-lang "$tgt" --train "$data/train" --valid "$data/val" \
  --vocab-size "${VOCAB_SIZE:-8000}" --joint --workers 2 --dest "$work/data" --force >/dev/null

echo "== train ($name)" >&2
SECONDS=0
s2s train "$config" --data "$work/data" --save-dir "$work/model" "${extra[@]}" >/dev/null
echo "$SECONDS" > "$work/train_seconds"

# valid_bleu NAME CHECKPOINT [TRANSLATE OPTIONS]: beam-5 validation BLEU, stored as $bleu;
# is_better: whether it beats $best_bleu
valid_bleu() {
  local name=$1 checkpoint=$2
  shift 2
  s2s translate -c "$checkpoint" -i "$data/val.$src.gz" -o "$work/val.$name.hyp" --beam 5 "$@"
  bleu=$(s2s score -r "$data/val.$tgt.gz" -i "$work/val.$name.hyp" --metrics bleu --format json \
         | python3 -c 'import json, sys; print(json.load(sys.stdin)["bleu"]["score"])')
  echo "   $name: validation BLEU $bleu" >&2
}
is_better() { python3 -c "import sys; sys.exit(0 if $bleu > $best_bleu else 1)"; }

echo "== average the last 5 checkpoints; keep it or the best checkpoint, by validation BLEU" >&2
s2s average --save-dir "$work/model" --last 5 -o "$work/model/averaged.pt" >/dev/null
best_bleu=-1
for candidate in averaged checkpoint_best; do
  valid_bleu "$candidate" "$work/model/$candidate.pt"
  if is_better; then best_bleu=$bleu; chosen=$candidate; fi
done
echo "$chosen" > "$work/chosen_checkpoint"

# The length penalty, chosen on the validation set too (beam 5; 1.0 was scored above). Another
# penalty replaces 1.0 only when it scores LENPEN_MARGIN (default 0.3) BLEU better: on the 1,014
# validation sentences smaller differences are noise (README, "On a GPU").
lenpen=1.0
margin=${LENPEN_MARGIN:-0.3}
best_bleu=$(python3 -c "print($best_bleu + $margin)")
for candidate in ${LENPENS:-0.6 1.4}; do
  valid_bleu "length-penalty-$candidate" "$work/model/$chosen.pt" --lenpen "$candidate"
  if is_better; then best_bleu=$bleu; lenpen=$candidate; fi
done
echo "$lenpen" > "$work/chosen_lenpen"

for test in "${tests[@]}"; do
  echo "== translate and score $test" >&2
  s2s translate -c "$work/model/$chosen.pt" -i "$data/$test.$src.gz" -o "$work/$test.hyp" --beam 5 \
    --lenpen "$lenpen"
  s2s score -r "$data/$test.$tgt.gz" -i "$work/$test.hyp" --metrics bleu,chrf,bleu_tok_lc \
    --format json > "$work/$test.score.json"
done
python3 "$here/report.py" "$work" "$pair" "${tests[@]}"
