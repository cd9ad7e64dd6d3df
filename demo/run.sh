#!/usr/bin/env bash
# The demo: a synthetic English->German-like corpus through every s2s stage, with pipes.
#   make_corpus -> s2s preprocess | s2s train -> s2s translate -> s2s score
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${DEMO_DIR:-$here/work}
rm -rf "$work"
mkdir -p "$work"

echo "== 1. a synthetic parallel corpus (no download)" >&2
python "$here/make_corpus.py" "$work/raw" >/dev/null
wc -l "$work"/raw/*.en >&2

echo "== 2. s2s preprocess ... | s2s train ..." >&2
best=$(s2s preprocess --src-lang en --tgt-lang de --train "$work/raw/train" --valid "$work/raw/valid" \
         --test "$work/raw/test" --vocab-size 500 --dest "$work/data" \
       | s2s train "$here/config.yaml" --save-dir "$work/model")
echo "best checkpoint: $best" >&2

echo "== 3. s2s translate (beam 5) on held-out sentences" >&2
s2s translate -c "$best" -i "$work/raw/test.en" -o "$work/test.hyp.de" --beam 5
head -n 3 "$work/raw/test.en" | s2s translate -c "$best" --attention-plot "$work/attention" >/dev/null

echo "== 4. s2s score" >&2
s2s score -r "$work/raw/test.de" -i "$work/test.hyp.de" --metrics bleu,chrf

echo
echo "Example translations (source / s2s / reference):"
paste -d'\n' <(head -n 4 "$work/raw/test.en") <(head -n 4 "$work/test.hyp.de") <(head -n 4 "$work/raw/test.de") \
  | awk '{ printf "%s %s\n", (NR % 3 == 1 ? "  src:" : NR % 3 == 2 ? "  s2s:" : "  ref:"), $0; if (NR % 3 == 0) print "" }'
exact=$(paste -d'\t' "$work/test.hyp.de" "$work/raw/test.de" | awk -F'\t' '$1 == $2 {n++} END {printf "%.1f", 100 * n / NR}')
echo "Exact-match accuracy on the test set: $exact%"
echo "Attention plot of the first test sentence: $work/attention/000001.svg (open it in a browser)"
