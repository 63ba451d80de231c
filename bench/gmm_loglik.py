"""Average log-likelihood (float64) of a diagonal GMM on the first N rows of a workload:
(1/N) sum_i log sum_k pi_k N(x_i; mu_k, diag sigma_k^2), the same evaluation for every
implementation's final model (bench/run.sh, init stage).

Usage: python3 gmm_loglik.py X.npy N PREFIX
PREFIX_{means,variances,weights}.npy or .f32, or PREFIX/{means,variances,weights}.npy as
`dfk gmm export` writes them (K x D, K x D, K); weights are renormalised.
Prints the average log-likelihood.
"""
import os
import sys

import numpy as np


def load(prefix, name, d):
    for path in (f"{prefix}_{name}.npy", os.path.join(prefix, f"{name}.npy")):
        if os.path.exists(path):
            return np.load(path).astype(np.float64)
    a = np.fromfile(f"{prefix}_{name}.f32", "<f4").astype(np.float64)
    return a if name == "weights" else a.reshape(-1, d)


def main():
    x = np.load(sys.argv[1], mmap_mode="r")
    n, prefix = int(sys.argv[2]), sys.argv[3]
    d = x.shape[1]
    mu, var, w = load(prefix, "means", d), load(prefix, "variances", d), load(prefix, "weights", d)
    w = w / w.sum()
    prec = 1.0 / var
    # log N(x; mu, var) = -1/2 [sum log(2 pi var) + sum (x - mu)^2 / var], expanded per block.
    const = np.log(np.maximum(w, 1e-300)) - 0.5 * (np.log(2 * np.pi * var).sum(1) + (mu * mu * prec).sum(1))
    total = 0.0
    for s in range(0, n, 8192):
        xb = np.asarray(x[s:min(n, s + 8192)], dtype=np.float64)
        l = const - 0.5 * (xb * xb) @ prec.T + xb @ (mu * prec).T
        m = l.max(1, keepdims=True)
        total += float((m[:, 0] + np.log(np.exp(l - m).sum(1))).sum())
    print(f"{total / n:.6f}")


if __name__ == "__main__":
    main()
