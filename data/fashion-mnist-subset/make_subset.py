"""Makes the embedded Fashion-MNIST subset used by dfk::dataset::embedded_fashion_mnist.

Source: the Fashion-MNIST gzipped IDX files (Debian package dataset-fashion-mnist, installed under
/usr/share/datasets/fashion-mnist/). Picks, with a fixed seed, 200 training images per class from
the 60,000 training images and 100 test images per class from the 10,000 test images, keeps them
in their original order, and writes them as gzipped IDX files (gzip mtime 0, so the output is
byte-for-byte reproducible).

Run from the repository root: python3 data/fashion-mnist-subset/make_subset.py [SOURCE_DIR]
"""
import gzip
import os
import struct
import sys

import numpy as np

SOURCE = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20141201


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, path
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def subset(rng, labels, per_class):
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picked))


rng = np.random.default_rng(SEED)
for split, per_class in (("train", 200), ("t10k", 100)):
    images = read_idx(os.path.join(SOURCE, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(SOURCE, f"{split}-labels-idx1-ubyte.gz"))
    idx = subset(rng, labels, per_class)
    write_idx(os.path.join(HERE, f"{split}-images-idx3-ubyte.gz"), images[idx])
    write_idx(os.path.join(HERE, f"{split}-labels-idx1-ubyte.gz"), labels[idx])
    print(split, len(idx), "images; per class", np.bincount(labels[idx]).tolist())
