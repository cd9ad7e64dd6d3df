#!/usr/bin/env bash
# The classic seq2seq lessons on generated data, with the installed `s2s` command only.
#
#   recipes/toy/run.sh [addition|dates|all]
#
# Environment: WORK (default recipes/toy/work), QUICK=1 for the short CI variant (small data,
# 30 updates), EXTRA for more KEY=VALUE overrides of every variant (e.g. EXTRA=train.threads=1).
# Each variant trains with per-epoch validation on the test split (exact match of greedy output),
# then `s2s translate` re-checks the final model through the public interface; report.py prints
# the results table and writes an accuracy plot (SVG).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
task=${1:-all}
work=${WORK:-$here/work}
quick=${QUICK:-0}
command -v s2s >/dev/null || { echo "s2s is not on PATH (source .venv/bin/activate)" >&2; exit 1; }

variants_addition=(
  "baseline|"
  "reversed|model.reverse_source=true"
  "peeky|model.peeky=true"
  "reversed+peeky|model.reverse_source=true model.peeky=true"
  "attention|model.attention=dot"
  "attention+reversed|model.attention=dot model.reverse_source=true"
)
variants_dates=(
  "plain|"
  "peeky|model.peeky=true"
  "attention|model.attention=dot"
)

run_task() {
  local name=$1 dir=$work/$1
  local -n variants=variants_$1
  # shellcheck disable=SC2206
  local size=50000 test=5000 extra=(${EXTRA:-})
  if [ "$quick" = 1 ]; then
    size=2000 test=200
    extra+=(train.max_epochs=null train.max_updates=30 train.validate_every=15)
  fi
  mkdir -p "$dir"
  python3 "$here/make_data.py" "$name" "$dir/raw" --size "$size" --test-size "$test" >/dev/null
  s2s preprocess --src-lang src --tgt-lang tgt --train "$dir/raw/train" --valid "$dir/raw/test" \
    --spm-type char --vocab-size 100 --dest "$dir/data" --force >/dev/null
  for entry in "${variants[@]}"; do
    local variant=${entry%%|*} overrides=${entry#*|}
    local save=$dir/$variant
    echo "== $name: $variant" >&2
    rm -rf "$save"
    SECONDS=0
    # shellcheck disable=SC2086
    best=$(s2s train "$here/$name.yaml" --data "$dir/data" --save-dir "$save" $overrides "${extra[@]}")
    echo "$SECONDS" > "$save/wall_seconds"
    s2s translate -c "$save/checkpoint_last.pt" -i "$dir/raw/test.src" --beam 1 -o "$save/test.hyp"
    echo "$best" > "$save/best_checkpoint"
  done
  if [ "$name" = dates ]; then  # one attention heatmap of the learned alignment
    head -n 3 "$dir/raw/test.src" | s2s translate -c "$dir/attention/checkpoint_last.pt" --beam 1 \
      --attention-plot "$dir/attention-plots" >/dev/null
  fi
  python3 "$here/report.py" "$dir"
}

case $task in
  addition|dates) run_task "$task" ;;
  all) run_task addition; run_task dates ;;
  *) echo "usage: $0 [addition|dates|all]" >&2; exit 2 ;;
esac
