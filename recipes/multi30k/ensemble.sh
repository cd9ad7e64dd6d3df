#!/usr/bin/env bash
# Runs of run.sh side by side: each run's test scores, their mean ± standard deviation, and the
# ensemble of the runs' kept checkpoints (s2s translate -c A -c B ...) on every test set of the pair.
#
#   MULTI30K=/path/to/multi30k/raw recipes/multi30k/ensemble.sh SRC-TGT RUN_DIR RUN_DIR [...]
#
# RUN_DIR is a run.sh work directory (WORK/<pair>-<config>: model/, chosen_checkpoint,
# chosen_lenpen, *.score.json),
# e.g. the same config with train.seed=1, 2, 3. OUT (default ./ensemble-SRC-TGT) receives the
# hypotheses, scores and summary.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pair=${1:?usage: ensemble.sh SRC-TGT RUN_DIR RUN_DIR [...]}
shift
[ $# -ge 2 ] || { echo "give two or more run directories" >&2; exit 2; }
src=${pair%-*} tgt=${pair#*-}
data=${MULTI30K:?set MULTI30K to the Multi30k task-1 raw directory}
out=${OUT:-ensemble-$pair}
command -v s2s >/dev/null || { echo "s2s is not on PATH (source .venv/bin/activate)" >&2; exit 1; }
mkdir -p "$out"
tests=()
for file in "$data"/test_*."$src".gz; do
  test=$(basename "$file" ".$src.gz")
  [ -e "$data/$test.$tgt.gz" ] && tests+=("$test")
done
# The ensembles decode with the first run's length penalty (chosen on validation by run.sh).
lenpen=$(cat "$1/chosen_lenpen" 2>/dev/null || echo 1.0)
for size in $(seq 2 $#); do
  checkpoints=()
  for run in "${@:1:$size}"; do
    checkpoints+=(-c "$run/model/$(cat "$run/chosen_checkpoint").pt")
  done
  for test in "${tests[@]}"; do
    echo "== ensemble of $size: $test" >&2
    s2s translate "${checkpoints[@]}" -i "$data/$test.$src.gz" -o "$out/$test.ensemble$size.hyp" \
      --beam 5 --lenpen "$lenpen" -q
    s2s score -r "$data/$test.$tgt.gz" -i "$out/$test.ensemble$size.hyp" \
      --metrics bleu,chrf,bleu_tok_lc --format json -q > "$out/$test.ensemble$size.score.json"
  done
done
python3 "$here/seeds.py" "$out" "$pair" "${tests[@]}" -- "$@" | tee "$out/summary.md"
