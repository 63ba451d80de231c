#!/usr/bin/env bash
# Peak memory of `dfk fisher` (streaming) against the size of its input: descriptor files of
# M x BATCH images of PER descriptors (the rows of workload WL tiled), encoded with
# --batch-images BATCH; max RSS from /usr/bin/time -v. Prints one JSON line per size.
# Each input is deleted after its run (the largest is M_max x BATCH x PER x D x 4 bytes).
#
#   bench/fisher_rss.sh DFK WL THREADS BATCH PER "1 4 16 64"
#
# PYTHON (default python3) is the interpreter with numpy; bench/run.sh passes its venv's.
set -euo pipefail
DFK=$1 WL=$2 THREADS=$3 BATCH=$4 PER=$5 MULTS=$6
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dfk_rss.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
"$DFK" --quiet gmm import --means "$WL/gmm_means.npy" --variances "$WL/gmm_variances.npy" \
  --weights "$WL/gmm_weights.npy" --out "$TMP/g.dfk"
for M in $MULTS; do
  IMAGES=$((M * BATCH))
  "$PYTHON" - "$WL/x.npy" "$TMP/x.npy" "$TMP/o.npy" "$IMAGES" "$PER" <<'PY'
import sys
import numpy as np
src = np.load(sys.argv[1], mmap_mode="r")
images, per = int(sys.argv[4]), int(sys.argv[5])
rows = images * per
x = np.lib.format.open_memmap(sys.argv[2], mode="w+", dtype=np.float32, shape=(rows, src.shape[1]))
step = min(len(src), 1 << 20)
for s in range(0, rows, step):
    n = min(step, rows - s)
    x[s:s + n] = src[:n]
x.flush()
del x
np.save(sys.argv[3], np.arange(images + 1, dtype=np.int64) * per)
PY
  XB=$(stat -c %s "$TMP/x.npy")
  /usr/bin/time -v -o "$TMP/time.txt" "$DFK" --json --threads "$THREADS" fisher --gmm "$TMP/g.dfk" \
    --descriptors "$TMP/x.npy" --offsets "$TMP/o.npy" --batch-images "$BATCH" --out "$TMP/fv.npy" >"$TMP/run.json"
  RSS=$(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$TMP/time.txt")
  SECS=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$TMP/run.json")
  FB=$(stat -c %s "$TMP/fv.npy")
  echo "{\"stage\":\"rss\",\"impl\":\"dfk\",\"batch_images\":$BATCH,\"images\":$IMAGES,\"per_image\":$PER,\"x_bytes\":$XB,\"fv_bytes\":$FB,\"max_rss_kb\":$RSS,\"seconds\":$SECS,\"threads\":$THREADS}"
  rm -f "$TMP/x.npy" "$TMP/fv.npy"
done
