"""Times scikit-learn's GaussianMixture(covariance_type="diag") EM on a bench/ workload.

One EM iteration = (time of fit with 1 + M iterations − time with 1 iteration) / M, both fits
starting from the workload's GMM (weights_init/means_init/precisions_init, cheap
init_params="random_from_data" whose result the given values override), tol = 0 so every
iteration runs. Thread count: set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before starting Python;
threadpoolctl limits it again here.

Usage: python3 sklearn_bench.py DIR N M THREADS   (prints one JSON line)
"""
import json
import os
import sys
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits


def fit_time(x, means, variances, weights, iters):
    gm = GaussianMixture(
        n_components=means.shape[0],
        covariance_type="diag",
        tol=0.0,
        reg_covar=1e-10,
        max_iter=iters,
        init_params="random_from_data",
        weights_init=weights,
        means_init=means,
        precisions_init=1.0 / variances,
        random_state=0,
    )
    t = time.perf_counter()
    gm.fit(x)
    return time.perf_counter() - t, gm.lower_bound_


def main():
    d, n, m, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    x = np.load(os.path.join(d, "x.npy"))[:n].astype(np.float64)
    means = np.load(os.path.join(d, "gmm_means.npy")).astype(np.float64)
    variances = np.load(os.path.join(d, "gmm_variances.npy")).astype(np.float64)
    weights = np.load(os.path.join(d, "gmm_weights.npy")).astype(np.float64)
    weights /= weights.sum()
    warnings.simplefilter("ignore", ConvergenceWarning)
    with threadpool_limits(limits=threads):
        fit_time(x[:1000], means, variances, weights, 1)  # warm-up (imports, first-call costs)
        t1, _ = fit_time(x, means, variances, weights, 1)
        tm, ll = fit_time(x, means, variances, weights, 1 + m)
    print(json.dumps({
        "impl": "sklearn", "stage": "em", "k": means.shape[0], "d": x.shape[1],
        "descriptors": n, "seconds": (tm - t1) / m, "loglik_avg": ll, "threads": threads,
    }))


if __name__ == "__main__":
    main()
