"""Writes one deterministic comparison workload (descriptors + GMM) for bench/run.sh.

Descriptors are PCA-like and unit-norm: K cluster centres whose per-dimension spread decays like
PCA eigenvalues (1/sqrt(1 + j/4)), points = centre + NOISE x spread x N(0, 1), rows L2-normalised.
The GMM is the clusters' own weights, means and variances (floored at 1e-5), i.e. what a fitted
model looks like. With NOISE = 1.5 the clusters overlap: a few of the K posteriors of a descriptor
are above 1e-6 (the summary reports the exact fraction).

Usage: python3 make_workload.py OUTDIR ROWS D K [NOISE] [SEED]
Writes x.npy / x.f32 (ROWS x D float32), gmm_{means,variances,weights}.{npy,f32}, dims.txt.
"""
import os
import sys

import numpy as np


def main():
    out, rows, d, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    noise = float(sys.argv[5]) if len(sys.argv) > 5 else 1.5
    seed = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    spread = 1.0 / np.sqrt(1.0 + np.arange(d) / 4.0)
    centres = rng.standard_normal((k, d)) * spread
    label = rng.integers(0, k, rows)
    x = centres[label] + noise * spread * rng.standard_normal((rows, d))
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x.astype(np.float32)
    xd = x.astype(np.float64)
    cnt = np.bincount(label, minlength=k).astype(np.float64)
    s1 = np.zeros((k, d))
    s2 = np.zeros((k, d))
    np.add.at(s1, label, xd)
    np.add.at(s2, label, xd * xd)
    m = np.maximum(cnt, 1.0)[:, None]
    means = s1 / m
    variances = np.maximum(s2 / m - means**2, 1e-5)
    weights = (cnt + 1.0) / (cnt + 1.0).sum()
    arrays = {
        "x": x,
        "gmm_means": means.astype(np.float32),
        "gmm_variances": variances.astype(np.float32),
        "gmm_weights": weights.astype(np.float32),
    }
    for name, a in arrays.items():
        np.save(os.path.join(out, name + ".npy"), a)
        a.astype("<f4").tofile(os.path.join(out, name + ".f32"))
    with open(os.path.join(out, "dims.txt"), "w") as f:
        f.write(f"{rows} {d} {k}\n")


if __name__ == "__main__":
    main()
