#!/usr/bin/env bash
# Comparison harness: dfk against VLFeat 0.9.21 (Debian libvlfeat-dev), scikit-learn and
# liblinear (Debian liblinear-tools) on the same deterministic workloads, peers and dfk run
# alternately, one table of medians, ranges and ratios with a verdict per target at the end.
# Everything it writes goes under bench/out/ (ignored by git).
#
#   bench/run.sh            scaled-down workloads (several minutes on 2 cores)
#   bench/run.sh --full     the issue's sizes: 1000 images x 1000 descriptors, N = 200k,
#                           SVM on 2000 x 16384 Fisher vectors
#
# Stages (STAGES, default all): encode em init real svm backward sift rss
#   encode, em  synthetic PCA-like descriptors (make_workload.py), VLFeat and dfk alternately;
#               scikit-learn's EM too (each repetition: VLFeat, dfk, scikit-learn)
#   init        VLFeat's k-means initialisation against dfk's, timed; then each runs EM to
#               convergence (relative LL change < 1e-5, at most 100 iterations) from its own
#               initialisation and the FINAL models' average log-likelihoods are compared
#               (gmm_loglik.py, float64, the same evaluation for both)
#   real        encode and EM on dense SIFT -> PCA-64 descriptors of Fashion-MNIST with a GMM
#               fitted on them (make_real_workload.py)
#   svm         liblinear-train -s 3 -e 0.01 -c 5 -B 1 (training time only, via an LD_PRELOAD
#               shim) and its primal objective; the time dfk's solver needs to reach that
#               objective (examples/svm_to_objective.rs); scikit-learn's LinearSVC once; on
#               synthetic improved FVs (`dfk bench --stage svm`) and on Fashion-MNIST FVs
#   backward    dfk's FV backward pass against its forward pass (dfk bench)
#   sift        dense SIFT 640x480, VLFeat and dfk alternately, one thread
#   rss         peak RSS of the streaming `dfk fisher` for inputs of 1x, 4x, 16x (and 64x with
#               --full) its batch (fisher_rss.sh)
#
# Environment: REPS (default 3), THREADS (default 2), KS (default "256 64"), STAGES,
# FASHION_MNIST (default /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
FULL=0
[[ "${1:-}" == "--full" ]] && FULL=1
REPS=${REPS:-3}
THREADS=${THREADS:-2}
KS=${KS:-"256 64"}
STAGES=${STAGES:-"encode em init real svm backward sift rss"}
FM=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
D=64
if ((FULL)); then
  IMAGES=1000 PER_IMAGE=1000 N_EM=200000 N_INIT=200000 EM_ITERS=3 SVM_N=2000 RSS_MULTS="1 4 16 64"
else
  IMAGES=100 PER_IMAGE=1000 N_EM=50000 N_INIT=50000 EM_ITERS=2 SVM_N=500 RSS_MULTS="1 4 16"
fi
ROWS=$((IMAGES * PER_IMAGE > N_EM ? IMAGES * PER_IMAGE : N_EM))
OUT=bench/out
RESULTS=$OUT/results.jsonl
mkdir -p "$OUT"
: >"$RESULTS"
has() { [[ " $STAGES " == *" $1 "* ]]; }

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
cc -O2 -shared -fPIC bench/liblinear_time.c -o $OUT/liblinear_time.so -ldl
DFK=target/release/dfk
SVM_EX=target/release/examples/svm_to_objective
if ! { cargo build --release -p dfk-cli --quiet && cargo build --release -p dfk --example svm_to_objective --quiet; }; then
  [[ -x $DFK && -x $SVM_EX ]] || exit 1
  echo "warning: cargo build failed; using the existing binaries" >&2
fi

{
  echo "{\"machine\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"cpus\": $(nproc),"
  echo " \"date\": \"$(date -u +%Y-%m-%dT%H:%MZ)\", \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\","
  echo " \"commit\": \"$(git rev-parse --short HEAD)\", \"full\": $FULL, \"reps\": $REPS, \"threads\": $THREADS,"
  echo " \"images\": $IMAGES, \"per_image\": $PER_IMAGE, \"n_em\": $N_EM, \"n_init\": $N_INIT, \"svm_n\": $SVM_N}"
} >$OUT/meta.json

dfk_json() { "$DFK" --quiet --threads "$THREADS" bench --json "$@"; }
# Marks result lines with the workload they ran on.
tag() { sed "s/^{/{\"workload\":\"$1\",/"; }
field() { "$PY" -c 'import json,sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$1"; }

# encode + EM on workload directory $1 (tag $2), VLFeat and dfk alternately.
encode_em() {
  local WL=$1 TAG=$2 K=$3
  if has encode || [[ $TAG != synthetic ]]; then
    echo "== $TAG K=$K: encode ($IMAGES x $PER_IMAGE descriptors)" >&2
    for ((r = 0; r < REPS; r++)); do
      $OUT/vlfeat_bench encode "$WL" "$IMAGES" "$PER_IMAGE" 1 "$THREADS" | tag "$TAG" >>"$RESULTS"
      dfk_json --stage encode --data "$WL/x.npy" --gmm "$WL/gmm" --images "$IMAGES" \
        --per-image "$PER_IMAGE" --reps 1 | tag "$TAG" >>"$RESULTS"
    done
  fi
  if has em || [[ $TAG != synthetic ]]; then
    echo "== $TAG K=$K: EM iteration (N=$N_EM)" >&2
    for ((r = 0; r < REPS; r++)); do
      # EM_ITERS timed iterations per run for each implementation: VLFeat their mean, dfk
      # (after one warm-up step) and scikit-learn (after a one-iteration set-up fit) their
      # median, so that no implementation's figure rests on a single short iteration.
      $OUT/vlfeat_bench em "$WL" "$N_EM" "$EM_ITERS" 1 "$THREADS" | tag "$TAG" >>"$RESULTS"
      dfk_json --stage em --data "$WL/x.npy" --gmm "$WL/gmm" --n "$N_EM" --reps "$EM_ITERS" |
        tag "$TAG" >>"$RESULTS"
      "$PY" bench/sklearn_bench.py "$WL" "$N_EM" "$EM_ITERS" "$THREADS" | tag "$TAG" >>"$RESULTS"
    done
  fi
}

for K in $KS; do
  WL=$OUT/wl_rows${ROWS}_k$K
  [[ -f $WL/dims.txt ]] || "$PY" bench/make_workload.py "$WL" "$ROWS" "$D" "$K"
  encode_em "$WL" synthetic "$K"
  if has init && [[ $K == 256 ]]; then
    echo "== K=$K: initialisation and EM to convergence (N=$N_INIT)" >&2
    XI=$WL/x_init$N_INIT.npy
    [[ -f $XI ]] || "$PY" -c 'import sys, numpy as np; np.save(sys.argv[2], np.load(sys.argv[1], mmap_mode="r")[:int(sys.argv[3])])' "$WL/x.npy" "$XI" "$N_INIT"
    for ((r = 0; r < REPS; r++)); do
      # EM to convergence (and the final model) after the first initialisation only.
      $OUT/vlfeat_bench init "$WL" "$N_INIT" 1 "$THREADS" $((r == 0 ? 100 : 0)) "$OUT/vlfeat_final_k$K" \
        | tag synthetic >>"$RESULTS"
      dfk_json --stage init --data "$XI" --gmm "$WL/gmm" --n "$N_INIT" --reps 1 | tag synthetic >>"$RESULTS"
    done
    FIT=$("$DFK" --quiet --json --threads "$THREADS" gmm fit --descriptors "$XI" --k "$K" \
      --max-iter 100 --tol 1e-5 --out "$OUT/dfk_final_k$K.dfk")
    "$DFK" --quiet gmm export "$OUT/dfk_final_k$K.dfk" --out-dir "$OUT/dfk_final_k$K"
    for impl in vlfeat dfk; do
      LL=$("$PY" bench/gmm_loglik.py "$XI" "$N_INIT" "$OUT/${impl}_final_k$K")
      EXTRA=""
      [[ $impl == dfk ]] && EXTRA=",\"em_iterations\":$(echo "$FIT" | field iterations),\"fit_seconds\":$(echo "$FIT" | field seconds)"
      echo "{\"workload\":\"synthetic\",\"impl\":\"$impl\",\"stage\":\"init_final\",\"k\":$K,\"descriptors\":$N_INIT,\"loglik_avg\":$LL$EXTRA}" >>"$RESULTS"
    done
  fi
done

if has real; then
  RD=$OUT/fm_desc_rows$ROWS
  if [[ ! -f $RD/descriptors.npy ]]; then
    echo "== Fashion-MNIST: dense SIFT -> PCA-64 descriptors (nice -n 19)" >&2
    # 112x112 images, bins 4 and 6, step 4: 1201 descriptors per image.
    nice -n 19 "$DFK" --quiet --threads "$THREADS" extract --fashion-mnist "$FM" \
      --limit $((ROWS / 1000 + 1)) --resize 112x112 --bins 4,6 --step 4 --pca-dims 64 \
      --spatial false --no-cache --out-dir "$RD"
  fi
  for K in $KS; do
    RW=$OUT/fm_wl_rows${ROWS}_k$K
    [[ -f $RW/dims.txt ]] || "$PY" bench/make_real_workload.py "$RD/descriptors.npy" "$RW" "$ROWS" "$N_EM" "$K" "$DFK" "$THREADS"
    encode_em "$RW" fmnist "$K"
  done
fi

if has svm; then
  SD=$OUT/svm_synthetic_n$SVM_N
  if [[ ! -f $SD/train.libsvm ]]; then
    "$DFK" --quiet --threads "$THREADS" bench --stage svm --svm-n "$SVM_N" --reps 1 --write-svm "$SD" >/dev/null
    "$PY" bench/svm_bench.py prepare "$SD"
  fi
  FD=$OUT/svm_fmnist_n$SVM_N
  if [[ ! -f $FD/train.libsvm ]]; then
    echo "== Fashion-MNIST Fisher vectors for the SVM (K=128, PCA-64: 16384 dims; nice -n 19)" >&2
    mkdir -p "$FD"
    nice -n 19 "$DFK" --quiet --threads "$THREADS" train --fashion-mnist "$FM" --limit "$SVM_N" \
      --pca-dims 64 --spatial false --k 128 --no-cache --out "$FD/model.dfk"
    nice -n 19 "$DFK" --quiet --threads "$THREADS" encode --model "$FD/model.dfk" --fashion-mnist "$FM" \
      --limit "$SVM_N" --no-cache --out "$FD/fv.npy" --labels-out "$FD/labels.npy"
    "$PY" bench/svm_bench.py prepare "$FD"
  fi
  for pair in "synthetic:$SD" "fmnist:$FD"; do
    TAG=${pair%%:*} DIR=${pair#*:}
    echo "== SVM ($TAG, n=$SVM_N): liblinear -s 3 -e 0.01 -c 5 -B 1 and dfk to its objective" >&2
    for ((r = 0; r < REPS; r++)); do
      L=$("$PY" bench/svm_bench.py liblinear "$DIR" 5 0.01 1 $OUT/liblinear_time.so)
      echo "$L" | tag "$TAG" >>"$RESULTS"
      TARGET=$(echo "$L" | field objective)
      for t in "$THREADS" 1; do
        $SVM_EX "$DIR/fv.npy" "$DIR/labels.npy" "$TARGET" 5 1 "$t" 1 | tag "$TAG" >>"$RESULTS"
      done
    done
    "$PY" bench/svm_bench.py sklearn "$DIR" 5 0.01 | tag "$TAG" >>"$RESULTS"
  done
fi

if has backward; then
  for K in $KS; do
    WL=$OUT/wl_rows${ROWS}_k$K
    BW=$((IMAGES < 200 ? IMAGES : 200))
    echo "== K=$K: FV backward against forward ($BW images)" >&2
    dfk_json --stage backward --data "$WL/x.npy" --gmm "$WL/gmm" --images "$BW" \
      --per-image "$PER_IMAGE" --reps "$REPS" | tag synthetic >>"$RESULTS"
  done
fi

if has sift; then
  echo "== dense SIFT, 640x480, one thread" >&2
  for ((r = 0; r < REPS; r++)); do
    $OUT/vlfeat_bench sift 1 >>"$RESULTS"
    "$DFK" --quiet --threads 1 bench --json --stage sift --reps 1 >>"$RESULTS"
  done
fi

if has rss; then
  K=$(echo $KS | awk '{print $NF}')
  echo "== streaming dfk fisher: peak RSS for inputs of $RSS_MULTS x 64 images (K=$K)" >&2
  PYTHON=$PY bench/fisher_rss.sh "$DFK" "$OUT/wl_rows${ROWS}_k$K" "$THREADS" 64 "$PER_IMAGE" "$RSS_MULTS" \
    | tag synthetic >>"$RESULTS"
fi
echo "{\"end\": \"$(date -u +%H:%MZ)\", \"load_end\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >$OUT/meta_end.json
"$PY" bench/summarise.py "$OUT/meta.json" "$RESULTS" "$OUT/meta_end.json" | tee $OUT/summary.md
