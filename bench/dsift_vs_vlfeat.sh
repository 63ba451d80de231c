#!/bin/sh
# Dense SIFT speed, dfk vs VLFeat 0.9.21, on the same 640x480 grey photo and machine, one thread.
# Needs libvlfeat-dev, a C compiler, python3 with Pillow, and OpenCV's sample photos:
#   cd /tmp && apt-get download opencv-doc && dpkg -x opencv-doc*.deb /tmp/ocv
# Usage: bench/dsift_vs_vlfeat.sh [photo.jpg]   (default: OpenCV's fruits.jpg)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
photo=${1:-/tmp/ocv/usr/share/doc/opencv-doc/examples/data/fruits.jpg}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$photo" "$tmp/photo_640x480.pgm" <<'PY'
import sys
from PIL import Image
Image.open(sys.argv[1]).convert("L").resize((640, 480), Image.LANCZOS).save(sys.argv[2])
PY
cc -O3 -o "$tmp/vlfeat_dsift" "$root/fixtures/sift/vlfeat_dsift.c" -lvl -lm
# VLFeat's dsift is single-threaded; OMP_NUM_THREADS=1 keeps its other parts so too.
OMP_NUM_THREADS=1 "$tmp/vlfeat_dsift" bench "$tmp/photo_640x480.pgm" 20
cd "$root"
DFK_SIFT_BENCH_IMAGE="$tmp/photo_640x480.pgm" cargo bench -p dfk --bench sift -- \
    --warm-up-time 1 --measurement-time 5 2>&1 | grep -E "descriptors per image|^dsift|time:|thrpt:"
