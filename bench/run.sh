#!/usr/bin/env bash
# Comparison harness: dfk against VLFeat 0.9.21 (Debian libvlfeat-dev) and scikit-learn on the
# same deterministic workloads, peers and dfk run alternately, one table of medians, ranges and
# ratios at the end. Everything it writes goes under bench/out/ (ignored by git).
#
#   bench/run.sh            scaled-down workloads (a few minutes on 2 cores)
#   bench/run.sh --full     the issue's sizes: 1000 images x 1000 descriptors, N = 200k
#
# Environment: REPS (default 3), THREADS (default 2), KS (default "256 64").
set -euo pipefail
cd "$(dirname "$0")/.."
FULL=0
[[ "${1:-}" == "--full" ]] && FULL=1
REPS=${REPS:-3}
THREADS=${THREADS:-2}
KS=${KS:-"256 64"}
D=64
if ((FULL)); then
  IMAGES=1000 PER_IMAGE=1000 N_EM=200000 N_INIT=200000 SK_ITERS=2
else
  IMAGES=100 PER_IMAGE=1000 N_EM=50000 N_INIT=50000 SK_ITERS=2
fi
ROWS=$((IMAGES * PER_IMAGE > N_EM ? IMAGES * PER_IMAGE : N_EM))
OUT=bench/out
RESULTS=$OUT/results.jsonl
mkdir -p "$OUT"
: >"$RESULTS"

export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# VLFeat's OpenMP threads spin while waiting; on a machine shared with other jobs that made its
# 2-thread encode 4x slower than 1 thread. Passive waiting gives it its idle-machine speed.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

# Python environment: numpy + scikit-learn (reuses the system packages when present).
VENV=$OUT/.venv
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c "import numpy, sklearn, threadpoolctl" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet numpy scikit-learn threadpoolctl
fi
PY=$VENV/bin/python

cc -O2 -fopenmp bench/vlfeat_bench.c -lvl -lm -o $OUT/vlfeat_bench
DFK=target/release/dfk
if ! cargo build --release -p dfk-cli --quiet; then
  [[ -x $DFK ]] || exit 1
  echo "warning: cargo build failed; using the existing $DFK" >&2
fi

{
  echo "{\"machine\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"cpus\": $(nproc),"
  echo " \"date\": \"$(date -u +%Y-%m-%dT%H:%MZ)\", \"full\": $FULL, \"reps\": $REPS, \"threads\": $THREADS,"
  echo " \"images\": $IMAGES, \"per_image\": $PER_IMAGE, \"n_em\": $N_EM, \"n_init\": $N_INIT}"
} >$OUT/meta.json

dfk_json() { "$DFK" --quiet --threads "$THREADS" bench --json "$@"; }

for K in $KS; do
  WL=$OUT/wl_rows${ROWS}_k$K
  [[ -f $WL/dims.txt ]] || "$PY" bench/make_workload.py "$WL" "$ROWS" "$D" "$K"
  echo "== K=$K: encode ($IMAGES x $PER_IMAGE descriptors)" >&2
  for ((r = 0; r < REPS; r++)); do
    $OUT/vlfeat_bench encode "$WL" "$IMAGES" "$PER_IMAGE" 1 "$THREADS" >>"$RESULTS"
    dfk_json --stage encode --data "$WL/x.npy" --gmm "$WL/gmm" --images "$IMAGES" \
      --per-image "$PER_IMAGE" --reps 1 >>"$RESULTS"
  done
  echo "== K=$K: EM iteration (N=$N_EM)" >&2
  for ((r = 0; r < REPS; r++)); do
    $OUT/vlfeat_bench em "$WL" "$N_EM" 2 1 "$THREADS" >>"$RESULTS"
    dfk_json --stage em --data "$WL/x.npy" --gmm "$WL/gmm" --n "$N_EM" --reps 1 >>"$RESULTS"
  done
  # scikit-learn is ~30x slower: one measurement (of SK_ITERS iterations) per K.
  "$PY" bench/sklearn_bench.py "$WL" "$N_EM" "$SK_ITERS" "$THREADS" >>"$RESULTS"
  if [[ $K == 256 ]]; then
    echo "== K=$K: initialisation (N=$N_INIT)" >&2
    for ((r = 0; r < REPS; r++)); do
      $OUT/vlfeat_bench init "$WL" "$N_INIT" 1 "$THREADS" >>"$RESULTS"
      dfk_json --stage init --data "$WL/x.npy" --gmm "$WL/gmm" --n "$N_INIT" --reps 1 >>"$RESULTS"
    done
  fi
done
echo "== dense SIFT, 640x480, one thread" >&2
for ((r = 0; r < REPS; r++)); do
  $OUT/vlfeat_bench sift 1 >>"$RESULTS"
  "$DFK" --quiet --threads 1 bench --json --stage sift --reps 1 >>"$RESULTS"
done
"$PY" bench/summarise.py "$OUT/meta.json" "$RESULTS" | tee $OUT/summary.md
