# Sourced by the GPU scripts (gpu_check.sh, gpu_recipe_ab.sh), from the repository root, to run
# s2s from the source tree on a machine without an install or network:
#
#   source benchmarks/gpu_env.sh NAME LOG
#
# makes $OUT absolute (creating it), $work a fresh /tmp/s2s-NAME.XXXXXX with an `s2s` on PATH
# that runs `python3 -m s2s_cli`, and sends everything printed from now on to $OUT/LOG as well.
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d "/tmp/s2s-$1.XXXXXX")
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p "$work/bin"
printf '#!/bin/sh\nexec python3 -m s2s_cli "$@"\n' > "$work/bin/s2s"
chmod +x "$work/bin/s2s"
export PATH=$work/bin:$PATH
exec > >(tee -a "$OUT/$2") 2>&1
